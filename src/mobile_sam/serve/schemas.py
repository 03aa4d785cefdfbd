"""Request and response bodies of the REST API (they also make the OpenAPI document).

Field names follow the Python API: ``point_coords``/``point_labels``/``box``/
``multimask_output`` as in ``SamPredictor.predict``, and the ``SamAutomaticMaskGenerator``
argument names for "everything", so the predictor's and generator's error messages name the
request fields. Coordinates are XY pixels of the uploaded image; boxes are XYXY.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

from ..prompts import GENERATOR_BOUNDS

MAX_PROMPT_POINTS = 256


class ImageInfo(BaseModel):
    id: str = Field(description="Image id: the sha256 of the uploaded bytes (hex).")
    width: int
    height: int
    cached: bool = Field(description="True if these bytes were uploaded before and their "
                                     "embedding was reused.")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    point_coords: list[tuple[FiniteFloat, FiniteFloat]] | None = Field(
        default=None, max_length=MAX_PROMPT_POINTS,
        description="N points [x, y] in pixels of the image (0 <= x <= width, 0 <= y <= height).")
    point_labels: list[int] | None = Field(
        default=None, max_length=MAX_PROMPT_POINTS,
        description="N labels: 1 foreground, 0 background, -1 ignored.")
    box: tuple[FiniteFloat, FiniteFloat, FiniteFloat, FiniteFloat] | None = Field(
        default=None, description="One box [x0, y0, x1, y1] in pixels of the image, x1 >= x0 "
                                  "and y1 >= y0, meeting the image.")
    multimask_output: bool = Field(
        default=True, description="Three masks for an ambiguous prompt, else one.")
    mask_format: Literal["png", "rle"] = Field(
        default="png", description="png: base64 8-bit PNG (255 inside, 0 outside); "
                                   "rle: COCO compressed RLE {size: [H, W], counts}.")


class CocoRle(BaseModel):
    size: tuple[int, int] = Field(description="[height, width]")
    counts: str


class PredictResponse(BaseModel):
    width: int
    height: int
    mask_format: Literal["png", "rle"]
    masks: list[str] | list[CocoRle] = Field(description="M masks (M = 3 with multimask_output).")
    scores: list[float] = Field(description="Predicted IoU of each mask.")
    boxes: list[tuple[int, int, int, int]] = Field(
        description="XYXY box of each mask, max inclusive; [0, 0, 0, 0] for an empty mask.")
    areas: list[int] = Field(description="Pixels inside each mask.")


def _option(name: str, default: float, cap: int | None = None) -> Any:
    """A generator option: its valid range is checked by `mobile_sam.prompts` (as on every
    surface) and stated in its description; ``cap`` is this server's own lower maximum."""
    text = GENERATOR_BOUNDS[name].expected
    if cap is not None:
        text += f"; at most {cap} on this server"
    return Field(default=default, le=cap, description=text[0].upper() + text[1:] + ".")


class EverythingRequest(BaseModel):
    """SamAutomaticMaskGenerator options (same names, defaults and valid ranges, see
    `mobile_sam.prompts.GENERATOR_BOUNDS`); the grid, batch and crop options are capped lower
    here so that one request cannot occupy the server for long."""

    model_config = ConfigDict(extra="forbid")

    points_per_side: int = _option("points_per_side", 32, cap=64)
    points_per_batch: int = _option("points_per_batch", 64, cap=256)
    pred_iou_thresh: float = _option("pred_iou_thresh", 0.88)
    stability_score_thresh: float = _option("stability_score_thresh", 0.95)
    stability_score_offset: float = _option("stability_score_offset", 1.0)
    box_nms_thresh: float = _option("box_nms_thresh", 0.7)
    crop_n_layers: int = _option("crop_n_layers", 0, cap=2)
    crop_nms_thresh: float = _option("crop_nms_thresh", 0.7)
    crop_overlap_ratio: float = _option("crop_overlap_ratio", 512 / 1500)
    crop_n_points_downscale_factor: int = _option("crop_n_points_downscale_factor", 1, cap=4)
    min_mask_region_area: int = _option("min_mask_region_area", 0)


class MaskRecord(BaseModel):
    segmentation: CocoRle
    area: int
    bbox: tuple[float, float, float, float] = Field(description="XYWH")
    predicted_iou: float
    point_coords: list[tuple[float, float]]
    stability_score: float
    crop_box: tuple[float, float, float, float] = Field(description="XYWH")


class EverythingResponse(BaseModel):
    width: int
    height: int
    masks: list[MaskRecord]


class Health(BaseModel):
    status: Literal["ok"]
    cached_images: int
    cache_bytes: int
    model_input_size: int


class ErrorBody(BaseModel):
    detail: str = Field(description="What was wrong, naming the field.")
    field: str | None = Field(default=None, description="The offending field, if one.")
