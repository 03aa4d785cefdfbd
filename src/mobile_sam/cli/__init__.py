"""The `mobile-sam` command: one thin subcommand per module in this package.

Each subcommand module defines `add_parser(subparsers)` (which registers its arguments and sets
`func`) and a `run(args) -> int`; helpers shared by several subcommands live in `_common`.
Errors a user can cause are raised as `UserError` (or `ValueError`/`FileNotFoundError`/...)
and printed as one line on stderr; `--debug` shows the traceback. Exit codes: 0 ok,
1 failure, 2 usage.

Nothing here imports torch until a subcommand runs a torch model: `mobile-sam --help` and
`segment`, `everything`, `serve` with `--model EXPORT_DIR` work where torch is not installed
(``pip install "mobile_sam[runtime]"``); the subcommands in `TORCH_ONLY` then stop with one
line naming the install command.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__
from .._optional import TORCH_INSTALL, MissingDependencyError, have_torch
from ._common import UserError

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
    "finetune": "finetune",
}
# Subcommands that always run the torch model code.
TORCH_ONLY = ("export", "distill", "eval")


def build_parser() -> argparse.ArgumentParser:
    epilog = None if have_torch() else (
        f"torch is not installed: {', '.join(TORCH_ONLY)} and checkpoint models need it "
        f"({TORCH_INSTALL}); segment, everything and serve run a folder written by "
        "`mobile-sam export` (--model DIR)")
    parser = argparse.ArgumentParser(prog="mobile-sam", epilog=epilog,
                                     description="MobileSAM: segment anything, fast.")
    parser.add_argument("--version", action="version", version=f"mobile-sam {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS.values():
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
    if args.command in TORCH_ONLY and not have_torch():
        print(f"mobile-sam {args.command}: error: needs torch, which is not installed: "
              f"{TORCH_INSTALL}", file=sys.stderr)
        return 1
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mobile-sam: interrupted", file=sys.stderr)
        return 130
    except (UserError, MissingDependencyError, ValueError, TypeError, FileNotFoundError,
            PermissionError,
            IsADirectoryError, NotADirectoryError, RuntimeError, OSError) as exc:
        if args.debug:
            raise
        print(f"mobile-sam {args.command}: error: {exc}", file=sys.stderr)
        return 1
