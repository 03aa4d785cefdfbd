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


# ------------------------------------------------------------------ dataset export

EXPORT_FORMATS = ["coco", "yolo", "labelme"]
"""The dataset formats of `mobile_sam.formats` (its FORMATS), as the export route takes them."""
MAX_EXPORT_IMAGES = 1000
MAX_EXPORT_OBJECTS = 10_000
"""Objects of one image in an export request (all of them are also bounded by the decoded
pixels, `mobile_sam.serve.export.MAX_EXPORT_MASK_PIXELS`, and the JSON body size)."""
# No control characters: labels become lines of YOLO's classes.txt, names become file names.
_ONE_LINE = r"^[^\x00-\x1f\x7f]+$"


class ExportObject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=200, pattern=_ONE_LINE,
                       description="Category name (COCO category, YOLO class, LabelMe label).")
    mask: CocoRle = Field(description="The object's mask as COCO compressed RLE, as predict "
                                      "and everything return it; size [height, width] of its "
                                      "image.")
    score: FiniteFloat | None = Field(default=None, description="Predicted IoU, if any.")


class ExportImage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_name: str = Field(min_length=1, max_length=255, pattern=_ONE_LINE,
                           description="The image's name in the dataset (a relative path); "
                                       "the YOLO and LabelMe files are named after it.")
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    objects: list[ExportObject] = Field(max_length=MAX_EXPORT_OBJECTS)


class ExportRequest(BaseModel):
    """Labelled masks of one or more images, written by `mobile_sam.formats` (the library
    functions the CLI uses)."""

    model_config = ConfigDict(extra="forbid")

    images: list[ExportImage] = Field(min_length=1, max_length=MAX_EXPORT_IMAGES)
    segmentation: Literal["rle", "polygon"] = Field(
        default="rle", description="COCO only: compressed RLE (exact) or polygons (holes "
                                   "filled). YOLO and LabelMe always use polygons.")
    tolerance: float = Field(default=1.0, ge=0, le=100,
                             description="Polygon simplification, in pixels.")
