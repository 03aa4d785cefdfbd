"""Dataset export: labelled masks as COCO, YOLO-seg or LabelMe, and masks as polygons.

One module per format (:mod:`.coco`, :mod:`.yolo`, :mod:`.labelme`), the mask outlines in
:mod:`.polygons` (OpenCV), the shared types and :func:`write_dataset` in :mod:`.dataset`.
numpy and OpenCV only: no torch.
"""
from __future__ import annotations

from .coco import coco_dataset, coco_mask_fields, merge_coco_datasets
from .dataset import FORMATS, SEGMENTATIONS, AnnotatedImage, Annotation, write_dataset
from .labelme import labelme_json
from .polygons import join_parts, mask_to_polygons
from .yolo import yolo_lines

__all__ = [
    "FORMATS",
    "SEGMENTATIONS",
    "AnnotatedImage",
    "Annotation",
    "coco_dataset",
    "coco_mask_fields",
    "join_parts",
    "labelme_json",
    "mask_to_polygons",
    "merge_coco_datasets",
    "write_dataset",
    "yolo_lines",
]
