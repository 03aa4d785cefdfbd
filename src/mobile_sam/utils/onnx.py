"""`SamOnnxModel`, the original's exportable prompt decoder, at its module path.

It is `mobile_sam.onnx.export.SamDecoderGraph` (the graph of this package's own
`decoder.onnx`) with the original's constructor, methods and optional extra outputs, so
scripts written for the original export the same graph.
"""
from __future__ import annotations

import torch

from ..modeling import Sam
from ..onnx.export import SamDecoderGraph, preprocess_shape
from .amg import calculate_stability_score

__all__ = ["SamOnnxModel", "Sam", "calculate_stability_score"]


class SamOnnxModel(SamDecoderGraph):
    """Inputs `image_embeddings` 1×256×64×64, `point_coords` B×N×2 (resized frame, a (0, 0)
    point labelled -1 appended when there is no box), `point_labels` B×N, `mask_input`
    1×1×256×256, `has_mask_input` (1,), `orig_im_size` (2,) (H, W). Outputs `masks` (logits at
    the original size), `iou_predictions`, `low_res_masks`; with `return_extra_metrics`,
    `masks`, `iou_predictions`, `stability_scores`, `areas`, `low_res_masks`.
    """

    def __init__(self, model: Sam, return_single_mask: bool, use_stability_score: bool = False,
                 return_extra_metrics: bool = False) -> None:
        super().__init__(model, single_mask=return_single_mask,
                         stability_score=use_stability_score)
        self.model = model
        self.img_size = model.image_encoder.img_size
        self.return_single_mask = return_single_mask
        self.use_stability_score = use_stability_score
        self.stability_score_offset = self.stability_offset
        self.return_extra_metrics = return_extra_metrics

    @staticmethod
    def resize_longest_image_size(input_image_size: torch.Tensor,
                                  longest_side: int) -> torch.Tensor:
        """(H, W) -> the resized (h, w), int64, by `ResizeLongestSide`'s rounding rule."""
        return preprocess_shape(input_image_size, longest_side)

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """Low-res logits -> logits at the original size (`Sam.postprocess_masks`)."""
        return self.upscale(masks, orig_im_size)

    def select_masks(self, masks: torch.Tensor, iou_preds: torch.Tensor,
                     num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask per prompt: the single-mask token with more than two points, else the
        best multimask output."""
        return self.select(masks, iou_preds, num_points)

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor, mask_input: torch.Tensor,
                has_mask_input: torch.Tensor, orig_im_size: torch.Tensor):
        masks, scores, low_res = super().forward(image_embeddings, point_coords, point_labels,
                                                 mask_input, has_mask_input, orig_im_size)
        if not self.return_extra_metrics:
            return masks, scores, low_res
        stability = calculate_stability_score(masks, self.threshold, self.stability_score_offset)
        areas = (masks > self.threshold).sum(-1).sum(-1)
        return masks, scores, stability, areas, low_res
