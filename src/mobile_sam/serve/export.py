"""``POST /v1/export/{format}``: datasets for download. The request's RLE masks are decoded
into :class:`mobile_sam.formats.AnnotatedImage` s, written by
:func:`mobile_sam.formats.write_dataset` (the function the CLI uses), and sent back as one
file: a JSON, or a zip of several."""
from __future__ import annotations

import io
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import Response

from ..masks import coco_to_rle, rle_to_mask
from .errors import ApiError, error_responses
from .routes import LimitsDep
from .schemas import EXPORT_FORMATS, CocoRle, ExportRequest

if TYPE_CHECKING:
    from ..formats import AnnotatedImage

__all__ = ["MAX_EXPORT_MASK_PIXELS", "annotated_images", "dataset_download", "router"]

MAX_EXPORT_MASK_PIXELS = 2**28
"""Decoded mask pixels in one export request (the sum of the objects' image sizes): the masks
are held in memory while the dataset is written."""


def _decode(rle: CocoRle, height: int, width: int, where: str) -> np.ndarray:
    """The (H, W) bool mask of ``rle``, checked against its image's size."""
    if tuple(rle.size) != (height, width):
        raise ApiError(422, "images", f"{where}.mask: size is {list(rle.size)}, expected "
                                      f"[{height}, {width}] (the image's [height, width])")
    try:
        counts = coco_to_rle(rle.model_dump())["counts"]
    except IndexError:  # the last run is cut short
        raise ApiError(422, "images", f"{where}.mask: counts is not a complete COCO RLE "
                                      "string") from None
    if any(c < 0 for c in counts):
        raise ApiError(422, "images", f"{where}.mask: counts decode to a negative run length")
    if sum(counts) != height * width:
        raise ApiError(422, "images", f"{where}.mask: counts cover {sum(counts)} pixels, "
                                      f"expected {height}*{width}={height * width}")
    # rle_to_mask gives a column-major view; OpenCV (the polygons) wants C order.
    return np.ascontiguousarray(rle_to_mask({"size": [height, width], "counts": counts}))


def annotated_images(body: ExportRequest, max_pixels: int) -> list[AnnotatedImage]:
    """The request's images with decoded masks; 413 past ``max_pixels`` per image or
    :data:`MAX_EXPORT_MASK_PIXELS` in all, 422 for a mask that does not fit its image."""
    from ..formats import AnnotatedImage, Annotation

    total = sum(im.width * im.height * len(im.objects) for im in body.images)
    if total > MAX_EXPORT_MASK_PIXELS:
        raise ApiError(413, "images", f"images: {total} mask pixels (objects x image size) "
                                      f"are more than this server exports at once "
                                      f"({MAX_EXPORT_MASK_PIXELS}); export fewer images")
    images = []
    for i, image in enumerate(body.images):
        where = f"images.{i}"
        if image.width * image.height > max_pixels:
            raise ApiError(413, "images", f"{where}: {image.width}x{image.height} has more "
                                          f"pixels than this server accepts ({max_pixels})")
        annotations = [
            Annotation(_decode(obj.mask, image.height, image.width, f"{where}.objects.{j}"),
                       obj.label, obj.score)
            for j, obj in enumerate(image.objects)
        ]
        images.append(AnnotatedImage(image.file_name, image.height, image.width, annotations))
    return images


def dataset_download(images: list[AnnotatedImage], fmt: str, *, segmentation: str = "rle",
                     tolerance: float = 1.0) -> tuple[str, str, bytes]:
    """(file name, media type, bytes) of the ``fmt`` dataset of ``images``: the COCO JSON, a
    LabelMe JSON for one image, else a zip of the files ``write_dataset`` wrote. The library's
    ``ValueError`` (e.g. two images that would write the same file) becomes a 422."""
    from ..formats import write_dataset

    with tempfile.TemporaryDirectory(prefix="mobile_sam_export-") as tmp:
        root = Path(tmp)
        try:
            written = write_dataset(images, fmt, root, tolerance=tolerance,
                                    segmentation=segmentation)
        except ValueError as err:  # never echo the server's temporary folder
            message = str(err).replace(str(root) + os.sep, "").replace(str(root), ".")
            raise ApiError(422, "images", f"images: {message}") from None
        names = sorted(p.relative_to(root).as_posix() for p in written)
        if len(names) == 1 and names[0].endswith(".json"):
            return Path(names[0]).name, "application/json", (root / names[0]).read_bytes()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in names:
                archive.write(root / name, name)
    return f"{fmt}_dataset.zip", "application/zip", buffer.getvalue()


# ------------------------------------------------------------------ the route

router = APIRouter(prefix="/v1/export", tags=["export"])


@router.post("/{format}", summary="A dataset (COCO, YOLO-seg or LabelMe) of labelled masks",
             response_class=Response,
             responses={200: {"content": {"application/json": {}, "application/zip": {}},
                              "description": "coco: the dataset JSON; labelme: the JSON of "
                                             "one image, or a zip of one per image; yolo: a "
                                             "zip of one .txt per image and classes.txt"},
                        **error_responses(e400="Invalid JSON",
                                          e413="Too many pixels (per image or in all)",
                                          e422="A field is invalid (a mask not matching its "
                                               "image, two images of one name, ...)")})
def export_dataset(format: Annotated[str, PathParam(description=", ".join(EXPORT_FORMATS),
                                                   json_schema_extra={"enum": EXPORT_FORMATS})],
                   body: ExportRequest, limits: LimitsDep) -> Response:
    if format not in EXPORT_FORMATS:
        raise ApiError(422, "format", f"format: unknown dataset format {format[:40]!r}; choose "
                                      f"one of {', '.join(EXPORT_FORMATS)}")
    images = annotated_images(body, limits["max_pixels"])
    name, media_type, content = dataset_download(images, format, tolerance=body.tolerance,
                                                 segmentation=body.segmentation)
    return Response(content=content, media_type=media_type,
                    headers={"Content-Disposition": _attachment(name)})


def _attachment(name: str) -> str:
    """A Content-Disposition for a file name of any characters: a plain ASCII ``filename``,
    plus the exact name percent-encoded (RFC 6266 ``filename*``) when they differ."""
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if plain == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"
