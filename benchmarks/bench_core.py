"""Core speed of mobile_sam on this machine: encoder, set_image, one predict, everything.

    python benchmarks/bench_core.py [--threads 2] [--repeats 5] [--checkpoint PATH]

Each item runs in its own process so that its peak RSS is its own. Uses the golden fixture's
checkpoint (random weights; speed does not depend on the values) unless --checkpoint is given.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BUS_PHOTO, fixture_checkpoint, machine, median_seconds, run_isolated, table  # noqa: E402


def _setup(checkpoint: str, threads: int):
    import numpy as np
    import torch
    from PIL import Image

    from mobile_sam import SamPredictor, sam_model_registry

    torch.set_num_threads(threads)
    model = sam_model_registry["vit_t"](checkpoint=checkpoint)
    photo = np.asarray(Image.open(BUS_PHOTO).convert("RGB"))
    photo = np.ascontiguousarray(photo.transpose(1, 0, 2)) if photo.shape[0] > photo.shape[1] else photo
    return model, SamPredictor(model), photo


def bench_encoder(checkpoint: str, threads: int, repeats: int) -> dict:
    import torch

    model, _, _ = _setup(checkpoint, threads)
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        seconds = median_seconds(lambda: model.image_encoder(x), repeats)
    return {"seconds": seconds}


def bench_set_image(checkpoint: str, threads: int, repeats: int) -> dict:
    _, predictor, photo = _setup(checkpoint, threads)
    return {"seconds": median_seconds(lambda: predictor.set_image(photo), repeats)}


def bench_predict(checkpoint: str, threads: int, repeats: int) -> dict:
    import numpy as np

    _, predictor, photo = _setup(checkpoint, threads)
    predictor.set_image(photo)
    point, label = np.array([[320.0, 240.0]]), np.array([1])
    return {"seconds": median_seconds(lambda: predictor.predict(point, label), repeats * 4)}


def bench_everything(checkpoint: str, threads: int, repeats: int) -> dict:
    from mobile_sam import SamAutomaticMaskGenerator

    model, _, photo = _setup(checkpoint, threads)
    generator = SamAutomaticMaskGenerator(model)
    masks = []
    seconds = median_seconds(lambda: masks.append(len(generator.generate(photo))), max(1, repeats // 3),
                             warmup=0)
    return {"seconds": seconds, "masks": masks[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoint", default=None, help="vit_t checkpoint (default: fixture_a's)")
    parser.add_argument("--skip-everything", action="store_true")
    args = parser.parse_args()
    args.checkpoint = args.checkpoint or str(fixture_checkpoint())
    items = [("image encoder 1x3x1024x1024", bench_encoder),
             ("set_image 640x480 photo", bench_set_image),
             ("predict 1 point, multimask", bench_predict)]
    if not args.skip_everything:
        items.append(("everything, default settings (32x32 points)", bench_everything))
    rows = []
    for name, fn in items:
        r = run_isolated(fn, args.checkpoint, args.threads, args.repeats)
        extra = f" ({r['masks']} masks)" if "masks" in r else ""
        rows.append([name + extra, f"{r['seconds'] * 1000:.1f} ms", f"{r['peak_rss_mb']:.0f} MB"])
    import torch

    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(table(rows, ["what", "median", "peak RSS"]))


if __name__ == "__main__":
    main()
