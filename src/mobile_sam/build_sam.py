"""The original `build_sam` module: the builders, the registry, and the model classes it
offers, over `mobile_sam.build`. `build_sam` is ViT-H, as in the original."""
from .build import (
                    build_sam_vit_b,
                    build_sam_vit_h,
                    build_sam_vit_l,
                    build_sam_vit_t,
                    sam_model_registry,
)
from .modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TinyViT, TwoWayTransformer

build_sam = build_sam_vit_h

__all__ = [
    "ImageEncoderViT", "MaskDecoder", "PromptEncoder", "Sam", "TinyViT", "TwoWayTransformer",
    "build_sam", "build_sam_vit_b", "build_sam_vit_h", "build_sam_vit_l", "build_sam_vit_t",
    "sam_model_registry",
]
