"""The `mobile-sam` command: one thin subcommand per module in this package.

Each subcommand module defines `add_parser(subparsers)` (which registers its arguments and sets
`func`) and a `run(args) -> int`. Errors a user can cause are raised as `UserError` (or
`ValueError`/`FileNotFoundError`/...) and printed as one line on stderr; `--debug` shows the
traceback. Exit codes: 0 ok, 1 failure, 2 usage.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Subcommand name -> module in this package. Modules are imported lazily so that
# `mobile-sam download` does not pay for importing FastAPI or ONNX.
SUBCOMMANDS: dict[str, str] = {
    "segment": "segment",
    "everything": "everything",
    "download": "download",
    "export": "export",
    "serve": "serve",
    "distill": "distill",
    "eval": "evaluate",
}


class UserError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit code 1."""


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every model-running subcommand shares."""
    parser.add_argument("--model", default="vit_t",
                        help="model name (vit_t, vit_b, vit_l, vit_h), known file name, or checkpoint path")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the model runs (see mobile_sam.runtime), for subcommands that predict."""
    from ..runtime import BACKENDS, PRECISIONS

    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="auto (default): OpenVINO if installed, else onnxruntime, else torch")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="encoder precision: fp32 (default), bf16 (openvino), int8 (onnxruntime)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mobile-sam", description="MobileSAM: segment anything, fast.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(f"{__name__}."):
                continue  # subcommand not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mobile-sam: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, TypeError, FileNotFoundError, PermissionError,
            IsADirectoryError, NotADirectoryError, RuntimeError, OSError) as exc:
        if args.debug:
            raise
        print(f"mobile-sam {args.command}: error: {exc}", file=sys.stderr)
        return 1


def load_model_from_args(args: argparse.Namespace):
    """Resolve `--model` (name, known file name or path; downloads into the cache when
    needed), build the variant the file holds, apply `--threads` and `--device`."""
    import torch

    from ..build import load_sam
    from ..weights import resolve_checkpoint

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UserError(f"--device {args.device!r} is not a torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available on this machine")
    # A progress bar only on a terminal: offline, the error is then the only line on stderr.
    path = resolve_checkpoint(args.model, progress=sys.stderr.isatty())
    return load_sam(path).to(device)
