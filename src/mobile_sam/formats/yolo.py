"""YOLO segmentation labels (Ultralytics' ``.txt`` layout: one object a line)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .dataset import AnnotatedImage, image_masks
from .polygons import join_parts, mask_to_polygons

__all__ = ["yolo_lines"]


def yolo_lines(image: AnnotatedImage, classes: Sequence[str], tolerance: float = 1.0
               ) -> list[str]:
    """The YOLO-seg label lines of ``image``: ``class x1 y1 x2 y2 ...`` per object.

    ``class`` is the label's index in ``classes`` (the lines of ``classes.txt``); the points
    are the object's outline through its boundary pixel centres, simplified at ``tolerance``
    pixels, divided by the image's width and height (in [0, 1], 6 decimals). YOLO has one
    polygon per object: the parts of a multi-part mask are joined into one polygon by thin
    links (:func:`~mobile_sam.formats.join_parts`, as Ultralytics converts COCO), and holes
    are filled. Empty masks are left out.
    """
    masks = image_masks(image)
    index = {name: i for i, name in enumerate(classes)}
    if len(index) != len(classes):
        raise ValueError(f"classes must not repeat a name, got {list(classes)}")
    scale = np.array([image.width, image.height], dtype=np.float64)
    lines = []
    for i, (ann, mask) in enumerate(zip(image.annotations, masks)):
        if ann.label not in index:
            raise ValueError(f"image {image.file_name!r}, annotation {i}: label {ann.label!r} "
                             f"is not among the classes {list(classes)}")
        parts = mask_to_polygons(mask, tolerance)
        if not parts:
            continue
        xy = np.clip(join_parts(parts) / scale, 0.0, 1.0)
        lines.append(" ".join([str(index[ann.label]), *(f"{v:.6f}" for v in xy.ravel())]))
    return lines
