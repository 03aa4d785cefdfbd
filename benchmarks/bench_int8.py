"""The int8 encoder (NNCF, OpenVINO) against our fp32 and bf16 encoders: speed side by side
in one process, and mask agreement with fp32 on your images.

    python benchmarks/bench_int8.py [--checkpoint mobile_sam.pt] [--images DIR_OR_FILES ...]
                                    [--calibrate] [--rounds 10] [--cpu-isa avx512_core_vnni]

Speed: the encoder alone (`mobile_sam.runtime.make_encoder`, the prepared 1024² input) and
`set_image` (with the resize and the padding) on one photo, each precision in turn within a
round (the order rotating), median of the per-round ratios to fp32. `--cpu-isa` caps the
instructions OpenVINO's kernels use (oneDNN's ONEDNN_MAX_CPU_ISA): `avx512_core_vnni` on a
CPU with AMX measures what a VNNI CPU without AMX (AMD Zen 4/5, Ice Lake) would run; the
kernels used are printed. Agreement: for every image, a
4 x 4 grid of single-point prompts, three masks each: IoU of the int8 (and bf16) masks with
fp32's. `--calibrate` quantizes the encoder again, calibrated on the given images (the cache
keeps one int8 encoder per weights; without it, the cached one is used, made from generated
images if none was calibrated yet). With the fixture's random weights the agreement figures
check the pipeline only; run this on your checkpoint and images to know what int8 does there.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REFERENCE, fixture_checkpoint, machine, table  # noqa: E402

PRECISIONS = ("fp32", "int8", "bf16")


def load_images(items: list[str]) -> dict[str, np.ndarray]:
    from mobile_sam.io import load_image

    paths: list[Path] = []
    for item in items:
        path = Path(item)
        paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")) \
            if path.is_dir() else [path]
    return {p.name: load_image(p) for p in paths}


def mask_ious(a: np.ndarray, b: np.ndarray) -> list[float]:
    union = (a | b).sum(axis=(1, 2))
    inter = (a & b).sum(axis=(1, 2))
    return [1.0 if u == 0 else float(i / u) for i, u in zip(inter, union)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="vit_t checkpoint (default: fixture_a's)")
    parser.add_argument("--images", nargs="+", default=[str(REFERENCE / "fixture_a")])
    parser.add_argument("--calibrate", action="store_true",
                        help="quantize again, calibrated on --images")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cpu-isa", default=None, metavar="ISA",
                        help="cap OpenVINO's kernels at this instruction set (ONEDNN_MAX_CPU_ISA: "
                             "avx512_core_vnni, avx512_core, avx2_vnni, avx2)")
    args = parser.parse_args()
    args.checkpoint = args.checkpoint or str(fixture_checkpoint())
    if args.cpu_isa:  # read by oneDNN when OpenVINO first uses it
        os.environ["ONEDNN_MAX_CPU_ISA"] = args.cpu_isa.upper()

    import torch

    from mobile_sam import SamPredictor, load_sam
    from mobile_sam.runtime import make_encoder
    from mobile_sam.runtime.openvino import cached_encoder_int8
    from mobile_sam.transforms import prepare_image

    torch.set_num_threads(2)
    print(machine())
    model = load_sam(args.checkpoint).eval()
    images = load_images(args.images)
    if args.calibrate:
        cached_encoder_int8(model, images=list(images.values()), overwrite=True)
    predictors = {p: SamPredictor(model, backend="openvino", precision=p, conversion="wait")
                  for p in PRECISIONS}
    encoders = {p: make_encoder(model, "openvino", p, threads=2) for p in PRECISIONS}
    print("int8 kernels:", ", ".join(int8_kernels(model)))
    photo = next(iter(images.values()))
    prepared = prepare_image(photo, model.img_size, *model.normalization)[0]
    calls = {"encoder": {p: (lambda e=e: e(prepared)) for p, e in encoders.items()},
             "set_image": {p: (lambda q=q: q.set_image(photo)) for p, q in predictors.items()}}
    times: dict[tuple[str, str], list[float]] = {}
    for what, by_precision in calls.items():
        for call in by_precision.values():  # compile and warm up
            call()
        for r in range(args.rounds):
            for name in PRECISIONS[r % 3:] + PRECISIONS[:r % 3]:
                start = time.perf_counter()
                by_precision[name]()
                times.setdefault((what, name), []).append(time.perf_counter() - start)
    ious: dict[str, list[float]] = {"int8": [], "bf16": []}
    for image in images.values():
        h, w = image.shape[:2]
        grid = [(x, y) for y in np.linspace(0, h, 6)[1:-1] for x in np.linspace(0, w, 6)[1:-1]]
        for p in predictors.values():
            p.set_image(image)
        for point in grid:
            prompt = (np.array([point]), np.array([1]))
            want = predictors["fp32"].predict(*prompt)[0]
            for name in ious:
                ious[name] += mask_ious(predictors[name].predict(*prompt)[0], want)
    rows = []
    for name in PRECISIONS:
        cells = [name]
        for what in calls:
            ratios = [f / t for f, t in zip(times[what, "fp32"], times[what, name])]
            cells += [f"{1000 * statistics.median(times[what, name]):.0f} ms",
                      f"x{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"]
        cells.append("" if name == "fp32" else f"mean {np.mean(ious[name]):.3f}, "
                     f"min {np.min(ious[name]):.3f} ({len(ious[name])} masks)")
        rows.append(cells)
    print(f"{photo.shape[1]}x{photo.shape[0]} photo, {args.rounds} rounds; "
          f"{len(images)} image(s) for agreement")
    print(table(rows, ["precision", "encoder", "over fp32", "set_image", "over fp32",
                       "mask IoU vs fp32"]))


def int8_kernels(model) -> list[str]:
    """The kernels OpenVINO picked for the int8 encoder's linear layers (e.g.
    brgemm_avx512_amx_I8 with AMX, brgemm_avx512_I8 with VNNI alone)."""
    import openvino as ov

    from mobile_sam.runtime.openvino import encoder_int8_path

    compiled = ov.Core().compile_model(str(encoder_int8_path(model)), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    kinds = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) == "FullyConnected":
            kinds.add(info["primitiveType"].astype(str))
    return sorted(kinds)


if __name__ == "__main__":
    main()
