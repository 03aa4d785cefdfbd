"""MobileSAM: Segment Anything with a 5M-parameter TinyViT image encoder.

The public API keeps the names and module paths of the original segment-anything / MobileSAM
code (`mobile_sam.build_sam`, `mobile_sam.predictor`, `mobile_sam.automatic_mask_generator`,
`mobile_sam.modeling`, `mobile_sam.utils.*`). Names are imported on first use, so torch-free
parts (`mobile_sam.onnx.runtime`, `mobile_sam.masks`, `mobile_sam.transforms`, `mobile_sam.io`)
work where torch is not installed.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "CheckpointError": "build",
    "ResizeLongestSide": "transforms",
    "SAM": "api",
    "Sam": "modeling",
    "SamAutomaticMaskGenerator": "automatic",
    "SamPredictor": "predictor",
    "build_sam": "build_sam",
    "build_sam_vit_b": "build",
    "build_sam_vit_h": "build",
    "build_sam_vit_l": "build",
    "build_sam_vit_t": "build",
    "load_sam": "build",
    "sam_model_registry": "build",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        try:
            module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        except ModuleNotFoundError as exc:
            if exc.name != "torch":
                raise
            from ._optional import require_torch

            require_torch(f"mobile_sam.{name}")  # raises: one line with the install command
            raise
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """`mobile_sam.build_sam` is both a submodule and, as in the original package, the ViT-H
    builder function. Importing a submodule binds it on its package; this keeps the name bound
    to the function, as the original's eager `from .build_sam import build_sam` does."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "build_sam" and isinstance(value, types.ModuleType):
            value = value.build_sam
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

if TYPE_CHECKING:  # pragma: no cover
    from .api import SAM
    from .automatic import SamAutomaticMaskGenerator
    from .build import (
        CheckpointError,
        build_sam_vit_b,
        build_sam_vit_h,
        build_sam_vit_l,
        build_sam_vit_t,
        load_sam,
        sam_model_registry,
    )
    from .build_sam import build_sam
    from .modeling import Sam
    from .predictor import SamPredictor
    from .transforms import ResizeLongestSide
