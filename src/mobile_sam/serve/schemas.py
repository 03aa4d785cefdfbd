"""Request and response bodies of the REST API (they also make the OpenAPI document).

Field names follow the Python API: ``point_coords``/``point_labels``/``box``/
``multimask_output`` as in ``SamPredictor.predict``, and the ``SamAutomaticMaskGenerator``
argument names for "everything", so the predictor's and generator's error messages name the
request fields. Coordinates are XY pixels of the uploaded image; boxes are XYXY.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

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
        default=None, description="One box [x0, y0, x1, y1] in pixels of the image.")
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


class EverythingRequest(BaseModel):
    """SamAutomaticMaskGenerator options (same names and defaults); bounded so that one
    request cannot occupy the server for long."""

    model_config = ConfigDict(extra="forbid")

    points_per_side: int = Field(default=32, ge=1, le=64)
    points_per_batch: int = Field(default=64, ge=1, le=256)
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = Field(default=0, ge=0, le=2)
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = Field(default=1, ge=1, le=4)
    min_mask_region_area: int = Field(default=0, ge=0)


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
