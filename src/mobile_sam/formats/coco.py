"""COCO instance-segmentation datasets (the ``instances_*.json`` layout pycocotools loads)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..masks import area_from_rle, mask_to_rle, masks_to_boxes, rle_to_coco
from .dataset import AnnotatedImage, check_segmentation, image_masks, label_names
from .polygons import mask_to_polygons

__all__ = ["coco_dataset", "coco_mask_fields", "mask_bbox_xywh", "merge_coco_datasets"]


def mask_bbox_xywh(mask: np.ndarray) -> list[float]:
    """COCO ``bbox`` ``[x, y, width, height]`` of an ``(H, W)`` bool mask: the pixel edges of
    the box around its pixels (as ``pycocotools.mask.toBbox`` gives); zeros when empty."""
    x0, y0, x1, y1 = (int(v) for v in masks_to_boxes(mask[None])[0])
    if not mask.any():
        return [0.0, 0.0, 0.0, 0.0]
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def coco_mask_fields(mask: np.ndarray, *, segmentation: str = "rle", tolerance: float = 1.0
                     ) -> dict[str, Any]:
    """The fields of a COCO annotation that describe an ``(H, W)`` bool mask:
    ``segmentation`` (as in :func:`coco_dataset`), ``area`` (pixel count) and ``bbox``
    (:func:`mask_bbox_xywh`)."""
    check_segmentation(segmentation)
    rle = mask_to_rle(mask[None])[0]
    segm: Any
    if segmentation == "rle":
        segm = rle_to_coco(rle)
    else:
        segm = [p.ravel().tolist() for p in mask_to_polygons(mask, tolerance, pixel_edges=True)]
    return {"segmentation": segm, "area": area_from_rle(rle), "bbox": mask_bbox_xywh(mask)}


def coco_dataset(images: Sequence[AnnotatedImage], *, segmentation: str = "rle",
                 tolerance: float = 1.0, categories: Sequence[str] | None = None
                 ) -> dict[str, Any]:
    """A COCO dataset dict (``info``, ``images``, ``annotations``, ``categories``) that
    ``pycocotools.coco.COCO`` loads, ready for ``json.dump``.

    Images get ids 1, 2, ... in order; annotations ids 1, 2, ... with ``image_id``,
    ``category_id``, ``segmentation``, ``area`` (pixel count), ``bbox`` (XYWH around the
    pixels), ``iscrowd`` 0, and ``score`` when the annotation has one. Empty masks are left
    out. ``segmentation``:

    * ``"rle"``: compressed RLE (``{"size": [H, W], "counts": str}``), exact, holes included;
    * ``"polygon"``: a list with the pixel-edge outline of every part of the mask
      (:func:`~mobile_sam.formats.mask_to_polygons`, simplified at ``tolerance`` pixels).
      COCO polygons cannot express holes: a hole is filled.

    ``categories``: the category names in id order (ids from 1); default: the labels in
    order of first appearance. A label missing from ``categories`` raises ``ValueError``.
    """
    check_segmentation(segmentation)
    all_masks = [image_masks(image) for image in images]
    names = list(categories) if categories is not None else label_names(images)
    if len(set(names)) != len(names):
        raise ValueError(f"categories must not repeat a name, got {names}")
    category_id = {name: i + 1 for i, name in enumerate(names)}
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, (image, masks) in enumerate(zip(images, all_masks), start=1):
        coco_images.append({"id": image_id, "file_name": image.file_name,
                            "height": int(image.height), "width": int(image.width)})
        for i, (ann, mask) in enumerate(zip(image.annotations, masks)):
            if ann.label not in category_id:
                raise ValueError(f"image {image.file_name!r}, annotation {i}: label "
                                 f"{ann.label!r} is not among the categories {names}")
            if not mask.any():
                continue
            record: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_id[ann.label],
                **coco_mask_fields(mask, segmentation=segmentation, tolerance=tolerance),
                "iscrowd": 0,
            }
            if ann.score is not None:
                record["score"] = float(ann.score)
            annotations.append(record)
    return {
        "info": {"description": "masks made with mobile_sam"},
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": category_id[n], "name": n, "supercategory": ""} for n in names],
    }


def merge_coco_datasets(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One COCO dataset holding the images and annotations of ``parts`` (datasets from
    :func:`coco_dataset` with the same categories), ids renumbered from 1 in order.

    This lets a long run keep each image's small COCO part instead of its masks.
    """
    if not parts:
        raise ValueError("merge_coco_datasets needs at least one dataset")
    categories = parts[0]["categories"]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for k, part in enumerate(parts):
        if part["categories"] != categories:
            raise ValueError(f"dataset {k} has categories {part['categories']}, dataset 0 has "
                             f"{categories}: merge only datasets made with the same categories")
        new_id = {}
        for image in part["images"]:
            new_id[image["id"]] = len(images) + 1
            images.append({**image, "id": len(images) + 1})
        for ann in part["annotations"]:
            annotations.append({**ann, "id": len(annotations) + 1,
                                "image_id": new_id[ann["image_id"]]})
    return {**parts[0], "images": images, "annotations": annotations}
