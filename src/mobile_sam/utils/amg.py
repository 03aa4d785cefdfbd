"""The original `utils.amg` helpers at their module path, over `mobile_sam.masks`.

The original takes and returns torch tensors where this package's helpers use numpy: the
tensor helpers here convert at the boundary (results come back on the input's device, float
results in the input's float dtype) and call the one numpy implementation. Pure-numpy and
list helpers are the same objects as in `mobile_sam.masks`.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from ..masks import (
    MaskData,
    area_from_rle,
    batch_iterator,
    build_all_layer_point_grids,
    build_point_grid,
    generate_crop_boxes,
    remove_small_regions,
    rle_to_coco,
    rle_to_mask,
)
from ..masks import (
    box_xyxy_to_xywh as _box_xyxy_to_xywh,
)
from ..masks import (
    is_box_near_crop_edge as _is_box_near_crop_edge,
)
from ..masks import (
    mask_to_rle as _mask_to_rle,
)
from ..masks import (
    masks_to_boxes as _masks_to_boxes,
)
from ..masks import (
    uncrop_boxes_xyxy as _uncrop_boxes_xyxy,
)
from ..masks import (
    uncrop_masks as _uncrop_masks,
)
from ..masks import (
    uncrop_points as _uncrop_points,
)
from ..onnx.export import stability_score_graph

__all__ = [
    "MaskData", "area_from_rle", "batch_iterator", "batched_mask_to_box", "box_xyxy_to_xywh",
    "build_all_layer_point_grids", "build_point_grid", "calculate_stability_score",
    "coco_encode_rle", "generate_crop_boxes", "is_box_near_crop_edge", "mask_to_rle_pytorch",
    "remove_small_regions", "rle_to_mask", "uncrop_boxes_xyxy", "uncrop_masks", "uncrop_points",
]

F = TypeVar("F", bound=Callable[..., Any])


def _on_tensor(fn: Callable[..., Any]) -> Callable[[F], F]:
    """Run `fn` (numpy) on the tensor given first; return a tensor like it."""
    def wrap(signature: F) -> F:
        @functools.wraps(signature)
        def run(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            out = torch.from_numpy(np.ascontiguousarray(fn(tensor.detach().cpu().numpy(),
                                                           *args, **kwargs)))
            if out.is_floating_point() and tensor.is_floating_point():
                out = out.to(tensor.dtype)
            return out.to(tensor.device)
        return run  # type: ignore[return-value]
    return wrap


@_on_tensor(_masks_to_boxes)
def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """(*, H, W) bool masks -> (*, 4) int64 XYXY boxes, max inclusive; empty -> zeros."""


@_on_tensor(_box_xyxy_to_xywh)
def box_xyxy_to_xywh(box_xyxy: torch.Tensor) -> torch.Tensor:
    """(..., 4) XYXY -> XYWH."""


@_on_tensor(_is_box_near_crop_edge)
def is_box_near_crop_edge(boxes: torch.Tensor, crop_box: list[int], orig_box: list[int],
                          atol: float = 20.0) -> torch.Tensor:
    """(N,) bool: boxes (crop frame) within `atol` px of a crop edge that is not an image edge."""


@_on_tensor(_uncrop_boxes_xyxy)
def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """XYXY boxes from the crop's frame to the image's."""


@_on_tensor(_uncrop_points)
def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """XY points from the crop's frame to the image's."""


@_on_tensor(_uncrop_masks)
def uncrop_masks(masks: torch.Tensor, crop_box: list[int], orig_h: int,
                 orig_w: int) -> torch.Tensor:
    """(N, h, w) crop masks zero-padded into place in (N, orig_h, orig_w)."""


def mask_to_rle_pytorch(tensor: torch.Tensor) -> list[dict[str, Any]]:
    """(B, H, W) bool masks -> uncompressed RLE dicts, column-major, starting with zeros."""
    return _mask_to_rle(tensor.detach().cpu().numpy())


def coco_encode_rle(uncompressed_rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> COCO compressed RLE (`counts` a str), as pycocotools writes it."""
    return rle_to_coco(uncompressed_rle)


def calculate_stability_score(masks: torch.Tensor, mask_threshold: float,
                              threshold_offset: float) -> torch.Tensor:
    """(..., H, W) logits -> IoU of the masks thresholded at t + offset and t − offset."""
    return stability_score_graph(masks, mask_threshold, threshold_offset)
