"""LabelMe annotation files (one JSON per image, polygon shapes)."""
from __future__ import annotations

from typing import Any

from .dataset import AnnotatedImage, image_masks
from .polygons import mask_to_polygons

__all__ = ["LABELME_VERSION", "labelme_json"]

LABELME_VERSION = "5.5.0"
"""The LabelMe file version written (the layout of LabelMe 5)."""


def labelme_json(image: AnnotatedImage, tolerance: float = 1.0,
                 image_path: str | None = None) -> dict[str, Any]:
    """A LabelMe annotation dict for ``image``, ready for ``json.dump``.

    Each part of each object becomes one ``"polygon"`` shape (outline through the boundary
    pixel centres, simplified at ``tolerance`` pixels) with the object's label; the parts of
    a multi-part object share a ``group_id`` (1, 2, ... per such object; ``null`` for
    one-part objects), which is how LabelMe groups shapes into one instance. Holes cannot be
    expressed and are filled. Empty masks are left out. ``imagePath`` is ``image_path``, by
    default the ``file_name`` (LabelMe resolves it relative to the JSON file); ``imageData``
    is null (LabelMe then reads the image file).
    """
    masks = image_masks(image)
    shapes: list[dict[str, Any]] = []
    groups = 0
    for ann, mask in zip(image.annotations, masks):
        parts = mask_to_polygons(mask, tolerance)
        group_id = None
        if len(parts) > 1:
            groups += 1
            group_id = groups
        for part in parts:
            shapes.append({
                "label": ann.label,
                "points": part.tolist(),
                "group_id": group_id,
                "description": "" if ann.score is None else f"score {ann.score:.4f}",
                "shape_type": "polygon",
                "flags": {},
            })
    return {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path if image_path is not None else image.file_name,
        "imageData": None,
        "imageHeight": int(image.height),
        "imageWidth": int(image.width),
    }
