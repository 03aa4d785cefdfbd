"""The Segment Anything model: image encoder + prompt encoder + mask decoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..transforms import PIXEL_MEAN, PIXEL_STD, normalize_and_pad
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class Sam(nn.Module):
    """Holds the three parts; the predictor and mask generator drive them.

    The model itself does no I/O: it takes and returns tensors.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder,
                 mask_decoder: MaskDecoder) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a B, 3, h, w image on the 0-255 scale and zero-pad it to img_size²."""
        return normalize_and_pad(x, self.img_size).to(self.pixel_mean.dtype)

    def postprocess_masks(self, masks: torch.Tensor, input_size: tuple[int, ...],
                          original_size: tuple[int, ...]) -> torch.Tensor:
        """Low-res logits B, M, 256, 256 -> B, M, H, W logits at the original image size.

        Upsample to the padded input size, crop the padding, upsample to the original size.
        """
        masks = F.interpolate(masks, (self.img_size, self.img_size), mode="bilinear",
                              align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    def forward(self, *args, **kwargs):  # pragma: no cover - guidance only
        raise NotImplementedError(
            "Sam is driven through SamPredictor or SamAutomaticMaskGenerator; "
            "call image_encoder / prompt_encoder / mask_decoder directly for custom pipelines"
        )
