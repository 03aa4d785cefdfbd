"""MobileSAM: Segment Anything with a 5M-parameter TinyViT image encoder.

The public API keeps the names of the original segment-anything / MobileSAM code.
"""
from .build import (CheckpointError, build_sam, build_sam_vit_b, build_sam_vit_h, build_sam_vit_l,
                    build_sam_vit_t, sam_model_registry)
from .modeling import Sam
from .predictor import SamPredictor
from .transforms import ResizeLongestSide

__all__ = [
    "CheckpointError",
    "ResizeLongestSide",
    "Sam",
    "SamPredictor",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "sam_model_registry",
]
