"""Helpers shared by the `mobile-sam` subcommands: errors, common options, loading the model,
output folders and names.

Kept torch-free at import time: every subcommand's parser is built on each run of
`mobile-sam`, so torch and the model code are imported inside the functions that need them.
`--model` may name an exported ONNX folder (`load_model_or_folder`): then torch is never
imported and the model runs in onnxruntime.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..modeling import Sam
    from ..onnx.runtime import OnnxPredictor

# `mobile_sam.runtime.BACKENDS` and `PRECISIONS`, written out so that building the parser does
# not import torch (tests/test_torchfree.py checks they stay equal).
BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "openvino")
PRECISION_CHOICES = ("auto", "fp32", "int8", "bf16")


class UserError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit code 1."""


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every model-running subcommand shares."""
    parser.add_argument("--model", default="vit_t",
                        help="model name (vit_t, vit_b, vit_l, vit_h), known file name, checkpoint "
                             "path, or a folder written by `mobile-sam export` (runs without torch)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the model runs (see mobile_sam.runtime), for subcommands that predict."""
    parser.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                        help="auto (default): OpenVINO if installed, else onnxruntime, else torch")
    parser.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                        help="encoder precision: fp32 (default), auto (bf16 where the CPU makes it "
                             "faster: AMX; else fp32), bf16 (openvino), int8 (openvino with "
                             "NNCF, or onnxruntime)")


def set_threads(threads: int | None) -> None:
    """Apply `--threads` (torch intra-op threads); None leaves torch's default."""
    check_threads(threads)
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)


def check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")


def conversion_mode(precision: str, one_shot: bool) -> str | None:
    """How a command waits for the one-time conversion of the model (`conversion=` of
    `SamPredictor`; None: the default, converting in the background after the first mask).

    bf16 or int8 asked for by name: converted first, with a bar, so that every mask written
    comes from the precision asked for (served eagerly meanwhile they would be fp32).
    Otherwise a `one_shot` run (one image, a few prompts): eager torch unless the conversion
    is cached, as converting would take longer than the run. $MOBILE_SAM_CONVERSION decides
    when set."""
    if "MOBILE_SAM_CONVERSION" in os.environ:
        return None
    if precision in ("bf16", "int8"):
        return "wait"
    return "cached" if one_shot else None


def load_model_or_folder(args: argparse.Namespace) -> Sam | OnnxPredictor:
    """`--model` as a torch model (`load_model`), or, when it names a folder written by
    `mobile-sam export`, as an `OnnxPredictor` (no torch imported; `--backend` auto,
    onnxruntime or openvino, `--threads` the engine's threads, `--precision` fp32 or int8,
    `--device` cpu)."""
    from ..onnx.runtime import OnnxModelError, is_export_folder, open_export_folder

    if not is_export_folder(args.model):
        return load_model(args)
    check_threads(args.threads)
    try:
        return open_export_folder(args.model, backend=getattr(args, "backend", "auto"),
                                  precision=getattr(args, "precision", "fp32"),
                                  device=args.device, threads=args.threads)
    except OnnxModelError as exc:
        raise UserError(f"--model {args.model}: {exc}") from None
    except ValueError as exc:
        raise UserError(f"--model {exc}") from None


def load_model(args: argparse.Namespace) -> Sam:
    """Resolve `--model` (name, known file name or path; downloads into the cache when
    needed), build the model the file holds (`mobile_sam.load_sam`), apply `--threads` and
    `--device`. `args.model` is replaced by the resolved file path, for outputs that record it.
    """
    from .._optional import require_torch

    require_torch(f"--model {args.model} (a checkpoint)")
    import torch

    from ..build import load_sam
    from ..weights import resolve_checkpoint

    set_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UserError(f"--device {args.device!r} is not a torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available on this machine")
    # A progress bar only on a terminal: offline, the error is then the only line on stderr.
    path = resolve_checkpoint(args.model, progress=sys.stderr.isatty())
    args.model = str(path)
    return load_sam(path).to(device)


def report(command: str, message: str) -> None:
    """Print one error line for one input, without breaking a progress bar."""
    from tqdm import tqdm

    tqdm.write(f"mobile-sam {command}: error: {message}", file=sys.stderr)


def prepare_out_dir(path: str | os.PathLike[str]) -> Path:
    """Create the output folder (and its parents); a clear `UserError` when that fails."""
    out = Path(path).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in [out, *out.parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            reason = f"{blocker} is a file, not a folder"
        else:
            reason = exc.strerror or str(exc)
        raise UserError(f"cannot create output folder {out}: {reason}") from None
    if not out.is_dir():
        raise UserError(f"cannot use output folder {out}: it is a file")
    if not os.access(out, os.W_OK):
        raise UserError(f"cannot write to output folder {out}: permission denied")
    return out


def output_bases(images: list[Path], out_dir: Path) -> list[Path]:
    """The output path without suffix for each image: `out_dir / <folder> / <stem>`.

    `<folder>` is the image's folder relative to the deepest folder holding all the inputs,
    so a single folder's tree is mirrored and equal stems in different folders stay apart.
    Images with the same stem in the same folder (`a.png`, `a.jpg`) get `_<ext>` appended.
    """
    if not images:
        return []
    absolute = [Path(os.path.abspath(p)) for p in images]
    root = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    rel = [p.parent.relative_to(root) / p.stem for p in absolute]
    counts: dict[Path, int] = {}
    for r in rel:
        counts[r] = counts.get(r, 0) + 1
    bases = []
    for r, p in zip(rel, absolute, strict=True):
        if counts[r] > 1:
            r = r.parent / f"{r.name}_{p.suffix.lstrip('.').lower() or 'noext'}"
        bases.append(out_dir / r)
    return bases


def display_name(image: Path, base: Path, out_dir: Path) -> str:
    """The image's path relative to the inputs' common folder, e.g. `sub/a.png` (POSIX)."""
    return (base.relative_to(out_dir).parent / image.name).as_posix()
