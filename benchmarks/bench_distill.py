"""Distillation throughput: images/s for data loading alone and for whole training steps.

    python benchmarks/bench_distill.py [--images 16] [--size 2250x1500] [--workers 0,2]
        [--batch-size 2] [--steps 6] [--teacher PATH] [--threads 2]

Writes `--images` synthetic JPEGs of `--size` (SA-1B's typical 2250×1500) to a temporary
folder, caches the teacher's embeddings (the golden fixture's vit_t, whose embedding has
vit_h's shape, unless --teacher is given), then times, per worker count:
- loading: `CachedEmbeddingDataset` through a DataLoader (read, hash, decode, resize,
  normalise, pad, read the cached embedding) with no model: the ceiling the data path puts
  on training;
- training: `distill train` steps of a fresh vit_t student (MSE only) on the same data.
A training step on a GPU needs the loader to deliver batch × steps/s images: compare the two.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fixture_checkpoint, machine, table  # noqa: E402


def _make_images(folder: Path, n: int, size: tuple[int, int]) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    for i in range(n):  # smooth content (upsampled noise) compresses like a photo
        img = Image.fromarray(np.roll(base, i * 7, axis=1)).resize((w, h), Image.BILINEAR)
        img.save(folder / f"img_{i:04d}.jpg", quality=90)


def _loading(cache_dir: Path, workers: int, batch: int) -> float:
    from torch.utils.data import DataLoader

    from mobile_sam.train.data import CachedEmbeddingDataset
    from mobile_sam.train.teacher_cache import EmbeddingCache

    cache = EmbeddingCache.open(cache_dir)
    dataset = CachedEmbeddingDataset(cache, range(len(cache)))
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers)
    start = time.perf_counter()
    count = sum(len(b["index"]) for b in loader)
    return count / (time.perf_counter() - start)


def _training(cache_dir: Path, out: Path, workers: int, batch: int, steps: int) -> float:
    from mobile_sam.train.distill import RunOptions, TrainConfig, train

    config = TrainConfig(epochs=100, batch_size=batch, val_fraction=0.0, warmup=0)
    train(cache_dir, "vit_t", out, config,
          options=RunOptions(workers=workers, stop_after=steps, progress=False))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # Steps after the first (which pays for start-up), from the logged elapsed times.
    timed = [r for r in log if "loss" in r]
    span = timed[-1]["elapsed_s"] - timed[0]["elapsed_s"]
    return batch * (len(timed) - 1) / span


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", default="2250x1500", help="WxH of the synthetic JPEGs")
    parser.add_argument("--workers", default="0,2", help="comma-separated loader worker counts")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed training steps (+1 warm-up)")
    parser.add_argument("--teacher", default=None, help="teacher checkpoint (default: fixture_a's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.teacher = args.teacher or str(fixture_checkpoint())

    import torch

    from mobile_sam.train.models import load_any
    from mobile_sam.train.teacher_cache import build_cache

    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _make_images(root / "images", args.images, (w, h))
        t0 = time.perf_counter()
        cache = build_cache(load_any(args.teacher), root / "images", root / "cache",
                            shard_size=64, progress=False)
        assert cache is not None
        cache_s = (time.perf_counter() - t0) / len(cache)
        size = sum(s["bytes"] for s in cache.manifest["shards"]) / len(cache)
        rows = []
        for workers in (int(v) for v in args.workers.split(",")):
            load = _loading(root / "cache", workers, args.batch_size)
            step = _training(root / "cache", root / f"run{workers}", workers, args.batch_size,
                             args.steps)
            rows.append([str(workers), f"{load:.2f}", f"{step:.2f}"])
    print(f"{machine()}; {args.images} JPEGs {w}x{h}; batch {args.batch_size}; "
          f"{args.threads} threads")
    print(f"cache: {cache_s:.2f} s/image (teacher on CPU), {size / 2**20:.2f} MiB/image")
    print(table(rows, ["loader workers", "loading images/s", "training images/s"]))


if __name__ == "__main__":
    main()
