"""Regenerate tests/data from a full reference folder:

    python tests/data/make_fixture.py /path/to/reference

The reference folder holds `fixture_a/` (checkpoint.pt, golden.npz, prompts.json, photos) and the
`state_dict_vit_*.json` manifests. What this writes, and why it is smaller, is in README.md here.
Each packed file is read back with the readers in tests/conftest.py and checked against its source
before the script finishes.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import lzma
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from conftest import (  # the readers the tests use
    CHECKPOINT_PACKED,
    GOLDEN_PACKED,
    GOLDEN_STEP_BITS,
    load_golden,
    rebuild_checkpoint,
)

PHOTOS = ["truck_640x427.png", "dog_517x333.png", "groceries_gray_600x400.png"]
MANIFESTS = [f"state_dict_vit_{v}.json" for v in ("t", "b", "l", "h")]
# Recorded outputs left out. The grayscale photo's embedding: the truck's embedding checks the
# same input geometry (683x1024) and the grayscale photo's six decoder calls (ten masks) still
# check its encoder output; keeping it would take tests/data over its budget.
OMITTED = ["groceries_gray_600x400/embedding"]
# Float arrays with at least this many values are quantized; smaller ones (IoU predictions,
# automatic-mask scores and boxes) are kept as recorded.
QUANTIZE_FROM = 4096
BUDGET = 25_000_000  # bytes, all of tests/data


def split_bytes(codes: np.ndarray) -> dict[str, np.ndarray]:
    """16-bit codes as a high-byte and a low-byte plane: the high bytes (sign, exponent or top
    bits) compress well on their own, the low bytes are close to random."""
    bits = codes.view(np.uint16)
    return {"hi": (bits >> 8).astype(np.uint8), "lo": (bits & 0xFF).astype(np.uint8)}


def write_packed(arrays: dict[str, np.ndarray], path: Path) -> None:
    """An .npz (uncompressed) of `arrays`, xz-compressed, written through a temporary file."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    os.replace(tmp, path)


def pack_checkpoint(source: Path, dest: Path) -> None:
    """Every float tensor as float16 byte planes (all high planes first, then all low planes,
    so that the compressible bytes sit together); int64 tensors as they are."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    highs, lows, ints = {}, {}, {}
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            ints[key] = tensor.numpy()
            continue
        if tensor.dtype != torch.float32 or not torch.equal(tensor.half().float(), tensor):
            raise ValueError(f"{source}: {key} is not float32 values exact in float16")
        planes = split_bytes(tensor.numpy().astype(np.float16))
        highs[key + ".hi"], lows[key + ".lo"] = planes["hi"], planes["lo"]
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    write_packed({"keys": np.array(list(state)), "source_sha256": np.array(sha),
                  **ints, **highs, **lows}, dest)


def quantization_step(array: np.ndarray) -> np.float32:
    """rms(array) / 2**GOLDEN_STEP_BITS: rounding to it leaves a relative L2 error of about
    2**-GOLDEN_STEP_BITS / sqrt(12), 7e-5 for 12 bits."""
    rms = np.sqrt(np.mean(np.square(array, dtype=np.float64)))
    return np.float32(rms * 2.0 ** -GOLDEN_STEP_BITS)


def pack_golden(source: Path, dest: Path) -> None:
    """Large float arrays as int16 multiples of a per-array step (rms / 2**GOLDEN_STEP_BITS);
    masks, integers and small float arrays as recorded; OMITTED arrays dropped."""
    golden = np.load(source)
    kept, highs, lows = {}, {}, {}
    for key in golden.files:
        array = golden[key]
        if key in OMITTED:
            continue
        if array.dtype != np.float32 or array.size < QUANTIZE_FROM:
            kept[key] = array
            continue
        step = quantization_step(array)
        codes = np.round(array / step)
        if np.abs(codes).max() > np.iinfo(np.int16).max:
            raise ValueError(f"{source}: {key} spans more than the int16 range of its step")
        planes = split_bytes(codes.astype(np.int16))
        highs[key + ".hi"], lows[key + ".lo"] = planes["hi"], planes["lo"]
        kept[key + ".step"] = step
    write_packed({"omitted": np.array(OMITTED), **kept, **highs, **lows}, dest)


def check(reference: Path, out: Path, tmp: Path) -> None:
    """Read the packed files back as the tests do and compare them with their sources."""
    rebuilt = rebuild_checkpoint(out / "fixture_a" / CHECKPOINT_PACKED, tmp / "checkpoint.pt")
    if rebuilt.read_bytes() != (reference / "fixture_a" / "checkpoint.pt").read_bytes():
        raise AssertionError("the rebuilt checkpoint.pt differs from the reference file")
    source = np.load(reference / "fixture_a" / "golden.npz")
    packed = load_golden(out / "fixture_a")
    assert sorted(packed) == sorted(source.files), "golden keys differ"
    for key in source.files:
        want, got = source[key], packed[key]
        if key in OMITTED:
            assert got is None, key
        elif want.dtype == np.float32 and want.size >= QUANTIZE_FROM:
            # Half a step, plus the float32 rounding of code * step.
            bound = 0.5 * quantization_step(want) + np.spacing(np.abs(want).max())
            error = np.abs(got - want).max()
            assert got.dtype == want.dtype and error <= bound, (key, error, bound)
            rel = np.linalg.norm(got - want) / np.linalg.norm(want)
            print(f"  {key}: max-abs {error:.2e}, relative L2 {rel:.2e}")
        else:
            assert got.dtype == want.dtype and np.array_equal(got, want), key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="folder holding fixture_a/ and the manifests")
    parser.add_argument("--out", type=Path, default=HERE, help="default: tests/data")
    args = parser.parse_args(argv)
    src, out = args.reference, args.out
    recorded = ("checkpoint.pt", "golden.npz", "prompts.json", *PHOTOS)
    needed = [src / "fixture_a" / n for n in recorded] + [src / n for n in MANIFESTS]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        parser.error("reference folder lacks " + ", ".join(missing))

    (out / "fixture_a").mkdir(parents=True, exist_ok=True)
    for name in MANIFESTS:
        shutil.copyfile(src / name, out / name)
    for name in ("prompts.json", *PHOTOS):
        shutil.copyfile(src / "fixture_a" / name, out / "fixture_a" / name)
    pack_checkpoint(src / "fixture_a" / "checkpoint.pt", out / "fixture_a" / CHECKPOINT_PACKED)
    pack_golden(src / "fixture_a" / "golden.npz", out / "fixture_a" / GOLDEN_PACKED)

    with tempfile.TemporaryDirectory() as tmp:
        check(src, out, Path(tmp))
    files = sorted(p for p in out.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        print(f"{path.stat().st_size:>10,}  {path.relative_to(out)}")
    total = sum(p.stat().st_size for p in files)
    print(f"{total:>10,}  in all")
    if total > BUDGET:
        print(f"error: {out} holds {total:,} bytes, over its budget of {BUDGET:,}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
