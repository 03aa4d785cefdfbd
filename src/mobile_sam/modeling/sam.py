"""The Segment Anything model: image encoder + prompt encoder + mask decoder."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..transforms import PIXEL_MEAN, PIXEL_STD, normalize_and_pad
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViT
from .vit import ImageEncoderViT

__all__ = ["ImageEncoderViT", "MaskDecoder", "PromptEncoder", "Sam", "TinyViT"]


class Sam(nn.Module):
    """Holds the three parts; `SamPredictor` and `SamAutomaticMaskGenerator` drive them.

    `forward` runs the whole model over a batch of images end to end, as the original does;
    the model itself does no I/O: it takes and returns tensors.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder,
                 mask_decoder: MaskDecoder, pixel_mean: Sequence[float] = PIXEL_MEAN,
                 pixel_std: Sequence[float] = PIXEL_STD) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        # Normalisation reads these floats, which a cast of the model (`half()`) cannot round;
        # the buffers are the original's attributes (and give the model's device).
        self.normalization = (tuple(map(float, pixel_mean)), tuple(map(float, pixel_std)))
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1),
                             persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a (B,) 3, h, w image on the 0-255 scale and zero-pad it to img_size²."""
        mean, std = self.normalization
        return normalize_and_pad(x, self.img_size, mean, std).to(self.pixel_mean.dtype)

    def postprocess_masks(self, masks: torch.Tensor, input_size: tuple[int, ...],
                          original_size: tuple[int, ...]) -> torch.Tensor:
        """Low-res logits B, M, 256, 256 -> B, M, H, W logits at the original image size.

        Upsample to the padded input size, crop the padding, upsample to the original size.
        """
        masks = F.interpolate(masks, (self.img_size, self.img_size), mode="bilinear",
                              align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    def forward(self, batched_input: list[dict[str, Any]],
                multimask_output: bool) -> list[dict[str, torch.Tensor]]:
        """Predict masks end to end for a batch of images, each with its own prompts.

        Each input dict holds `image` (3, h, w: the image resized by `ResizeLongestSide`, not
        normalised), `original_size` (H, W), and optionally `point_coords` (B, N, 2) with
        `point_labels` (B, N), `boxes` (B, 4) and `mask_inputs` (B, 1, 256, 256), all in the
        resized frame. Each output dict holds `masks` (B, M, H, W bool), `iou_predictions`
        (B, M) and `low_res_logits` (B, M, 256, 256), M = 3 with `multimask_output`, else 1.
        Differentiable; batched over images in the encoder.
        """
        images = torch.stack([self.preprocess(record["image"]) for record in batched_input])
        embeddings = self.image_encoder(images)
        image_pe = self.prompt_encoder.get_dense_pe()
        outputs = []
        for record, embedding in zip(batched_input, embeddings):
            points = None
            if record.get("point_coords") is not None:
                points = (record["point_coords"], record["point_labels"])
            sparse, dense = self.prompt_encoder(points=points, boxes=record.get("boxes"),
                                                masks=record.get("mask_inputs"))
            low_res, iou = self.mask_decoder(
                image_embeddings=embedding.unsqueeze(0), image_pe=image_pe,
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(low_res, tuple(record["image"].shape[-2:]),
                                           tuple(record["original_size"]))
            outputs.append({"masks": masks > self.mask_threshold, "iou_predictions": iou,
                            "low_res_logits": low_res})
        return outputs
