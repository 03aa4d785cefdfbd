"""Encoder and decoder latency: torch eager vs onnxruntime fp32 and int8, same thread count.

    python benchmarks/bench_onnx.py [--model vit_t|PATH] [--onnx DIR] [--threads 2]
                                    [--repeats 5] [--image PHOTO]

Exports the model (with the int8 encoder) into a temporary folder unless --onnx names an
existing export. Runs are interleaved (torch, fp32, int8, torch, ...) so that a busy machine
slows every column alike; the table shows medians and speed-ups against torch from this one
run. Absolute times vary between machines and runs: compare the ratios. Not a test.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BUS_PHOTO, fixture_checkpoint  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint name or path (default: "
                        "fixture_a's random-weight vit_t: speed does not depend on weights)")
    parser.add_argument("--onnx", default=None, help="an existing export folder (with int8)")
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and onnxruntime")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per column")
    parser.add_argument("--points", type=int, default=64, help="prompts in the batched decoder row")
    parser.add_argument("--image", default=str(BUS_PHOTO))
    return parser.parse_args(argv)


def machine() -> str:
    from mobile_sam.onnx.export import machine_description

    load = ""
    if hasattr(os, "getloadavg"):
        one, five, fifteen = os.getloadavg()
        load = f", load average {one:.1f} {five:.1f} {fifteen:.1f}"
    return machine_description() + load


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per function; one warm-up each, then runs interleaved."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import onnxruntime
    import torch

    from mobile_sam.build import load_sam
    from mobile_sam.io import load_image
    from mobile_sam.onnx import OnnxPredictor
    from mobile_sam.onnx.export import export_onnx
    from mobile_sam.predictor import SamPredictor
    from mobile_sam.weights import resolve_checkpoint

    torch.set_num_threads(args.threads)
    checkpoint = resolve_checkpoint(args.model or fixture_checkpoint())
    model = load_sam(checkpoint)
    image = load_image(args.image)
    tmp = None
    folder = Path(args.onnx) if args.onnx else None
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_onnx-")
        folder = Path(tmp.name)
        print(f"exporting {checkpoint.name} to {folder} ...", file=sys.stderr)
        export_onnx(model, folder, quantize="int8", eval_images=[image], threads=args.threads,
                    log=lambda m: print(m, file=sys.stderr))

    torch_p = SamPredictor(model)
    fp32 = OnnxPredictor(folder, threads=args.threads)
    int8 = OnnxPredictor(folder, precision="int8", threads=args.threads)
    for p in (torch_p, fp32, int8):
        p.set_image(image)
    prepared, _ = fp32.prepare(image)
    x = torch.from_numpy(prepared)
    point = (np.array([[image.shape[1] * 0.5, image.shape[0] * 0.5]]), np.array([1]))
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, (args.points, 2)) * [image.shape[1], image.shape[0]]

    def torch_encoder() -> object:
        with torch.inference_mode():
            return model.image_encoder(x)

    rows = [
        ("encoder 1x3x1024x1024", timed({"torch": torch_encoder,
                                          "fp32": lambda: fp32.encode(prepared),
                                          "int8": lambda: int8.encode(prepared)}, args.repeats)),
        (f"decoder, 1 point, 3 masks at {image.shape[0]}x{image.shape[1]}",
         timed({"torch": lambda: torch_p.predict(*point),
                "fp32": lambda: fp32.predict(*point)}, args.repeats)),
        (f"decoder, {args.points} points, low-res (automatic masks)",
         timed({"torch": lambda: torch_p.predict_point_batch(points),
                "fp32": lambda: fp32.predict_point_batch(points)}, max(1, args.repeats // 2))),
    ]
    print(f"machine: {machine()}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, {args.threads} threads, {args.repeats} runs, medians")
    print()
    print("| what | torch eager | ORT fp32 | ORT int8 | fp32 vs torch | int8 vs torch |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t in rows:
        int8_time = f"{t['int8'] * 1000:.0f} ms" if "int8" in t else "-"
        int8_ratio = f"x{t['torch'] / t['int8']:.2f}" if "int8" in t else "-"
        print(f"| {name} | {t['torch'] * 1000:.0f} ms | {t['fp32'] * 1000:.0f} ms | {int8_time} | "
              f"x{t['torch'] / t['fp32']:.2f} | {int8_ratio} |")
    info = fp32.info.get("int8")
    if info:
        print(f"\nint8 encoder at export: mask IoU vs fp32 mean {info['mask_iou_mean']:.4f}, "
              f"min {info['mask_iou_min']:.4f} ({info['num_masks']} masks)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
