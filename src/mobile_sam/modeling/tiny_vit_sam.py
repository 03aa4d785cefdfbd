"""The original `modeling.tiny_vit_sam` module: TinyViT (defined in `tiny_vit.py`) and its
building blocks under their original names. The blocks keep the original state-dict layout;
their constructors take this package's arguments (only `TinyViT`'s are the original's)."""
from .common import DropPath, LayerNorm2d
from .tiny_vit import AttentionStage as BasicLayer
from .tiny_vit import ConvBN as Conv2d_BN
from .tiny_vit import ConvStage as ConvLayer
from .tiny_vit import MBConv, PatchEmbed, PatchMerging, TinyViT, TinyViTBlock
from .tiny_vit import TokenMLP as Mlp
from .tiny_vit import WindowAttention as Attention

__all__ = [
    "Attention", "BasicLayer", "Conv2d_BN", "ConvLayer", "DropPath", "LayerNorm2d", "MBConv",
    "Mlp", "PatchEmbed", "PatchMerging", "TinyViT", "TinyViTBlock",
]
