"""Clear one-line errors for optional dependencies, torch first of all.

The package imports without torch: an exported ONNX folder runs on numpy, Pillow, SciPy and
onnxruntime (``pip install "mobile_sam[runtime]"``). What needs the model code (a checkpoint,
export, distillation, evaluation) calls `require_torch` first, so a machine without torch
gets one line naming the install command instead of an ImportError from deep inside.
"""
from __future__ import annotations

import importlib.util

TORCH_INSTALL = 'pip install "mobile_sam[torch]"'


class MissingDependencyError(ImportError):
    """An optional dependency a feature needs is not installed; the message says how to
    install it."""


def have_torch() -> bool:
    """Whether torch can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def require_torch(what: str) -> None:
    """Raise `MissingDependencyError` naming `what` and the install command when torch is
    not importable. `what` completes "... needs torch", e.g. "loading a checkpoint"."""
    if have_torch():
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            return
    raise MissingDependencyError(
        f"{what} needs torch, which is not installed: {TORCH_INSTALL} "
        "(or run an exported ONNX folder: mobile-sam export --model MODEL --out DIR on a "
        "machine with torch, then --model DIR)"
    )
