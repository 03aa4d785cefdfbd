"""Pure nn.Modules of SAM and MobileSAM: tensors in, tensors out, no I/O."""
from .common import LayerNorm2d, MLPBlock
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT, TinyViTConfig
from .transformer import TwoWayTransformer
from .vit import ImageEncoderViT, ViTConfig

__all__ = [
    "ImageEncoderViT", "LayerNorm2d", "MLPBlock", "MaskDecoder", "PromptEncoder", "Sam",
    "TinyViT", "TinyViTConfig", "TwoWayTransformer", "ViTConfig",
]
