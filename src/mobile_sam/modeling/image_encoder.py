"""The original `modeling.image_encoder` module: SAM's ViT encoder (defined in `vit.py`)."""
from .common import LayerNorm2d, MLPBlock
from .vit import (
                  Attention,
                  Block,
                  ImageEncoderViT,
                  PatchEmbed,
                  add_decomposed_rel_pos,
                  get_rel_pos,
                  window_partition,
                  window_unpartition,
)

__all__ = [
    "Attention", "Block", "ImageEncoderViT", "LayerNorm2d", "MLPBlock", "PatchEmbed",
    "add_decomposed_rel_pos", "get_rel_pos", "window_partition", "window_unpartition",
]
