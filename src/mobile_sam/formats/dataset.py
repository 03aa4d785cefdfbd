"""Labelled masks of images, and writing them as a dataset in one of :data:`FORMATS`.

An :class:`AnnotatedImage` holds an image's name and size and its :class:`Annotation` s (a
mask with a label and an optional score). The format modules turn them into COCO, YOLO-seg or
LabelMe; :func:`write_dataset` writes one of them to a folder, each file atomically.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

import numpy as np

__all__ = ["FORMATS", "SEGMENTATIONS", "AnnotatedImage", "Annotation", "COCO_FILE_NAME",
           "YOLO_CLASSES_FILE_NAME", "check_format", "label_names", "write_dataset"]

FORMATS = ("coco", "yolo", "labelme")
"""Dataset formats :func:`write_dataset` writes."""

SEGMENTATIONS = ("rle", "polygon")
"""How COCO annotations store a mask: compressed RLE (exact) or polygons (no holes)."""

COCO_FILE_NAME = "annotations.json"
YOLO_CLASSES_FILE_NAME = "classes.txt"


@dataclass
class Annotation:
    """One labelled object: an ``(H, W)`` bool ``mask`` of its image, a ``label`` (the
    category name) and, when a model made it, its ``score``."""

    mask: np.ndarray
    label: str = "object"
    score: float | None = None


@dataclass
class AnnotatedImage:
    """An image's name as written into the dataset (``file_name``: a basename or a relative
    path with ``/``), its size in pixels and its objects."""

    file_name: str
    height: int
    width: int
    annotations: list[Annotation] = field(default_factory=list)


def check_format(fmt: str) -> str:
    """``fmt`` if it is one of :data:`FORMATS`, else a ``ValueError`` naming the choices."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def check_segmentation(segmentation: str) -> str:
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"unknown COCO segmentation {segmentation!r}; choose one of "
                         f"{', '.join(SEGMENTATIONS)}")
    return segmentation


def image_masks(image: AnnotatedImage) -> list[np.ndarray]:
    """The annotations' masks of ``image`` as bool arrays, after checking the image's fields;
    a ``ValueError`` / ``TypeError`` names the image (and the annotation) at fault."""
    name = image.file_name
    if not isinstance(name, str) or not name:
        raise ValueError(f"file_name must be a non-empty string, got {name!r}")
    for attr in ("height", "width"):
        value = getattr(image, attr)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"image {name!r}: {attr} must be a positive int, got {value!r}")
    masks = []
    for i, ann in enumerate(image.annotations):
        where = f"image {name!r}, annotation {i}"
        if not isinstance(ann.label, str) or not ann.label.strip() or "\n" in ann.label:
            raise ValueError(f"{where}: label must be a non-empty one-line string, "
                             f"got {ann.label!r}")
        if ann.score is not None and not np.isfinite(ann.score):
            raise ValueError(f"{where}: score must be a finite number or None, got {ann.score!r}")
        mask = np.asarray(ann.mask)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"{where}: mask has shape {mask.shape}, expected "
                             f"({image.height}, {image.width}) (the image's height, width)")
        if mask.dtype != np.bool_:
            if not np.issubdtype(mask.dtype, np.integer):
                raise TypeError(f"{where}: mask must be bool, got dtype {mask.dtype}")
            mask = mask != 0
        masks.append(mask)
    return masks


def label_names(images: Sequence[AnnotatedImage]) -> list[str]:
    """Every label of the images' annotations once, in order of first appearance (the
    category and class order when none is given)."""
    names: dict[str, None] = {}
    for image in images:
        for ann in image.annotations:
            names.setdefault(ann.label, None)
    return list(names)


def _per_image_path(file_name: str, suffix: str) -> PurePosixPath:
    path = PurePosixPath(file_name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"image file_name {file_name!r} must be a relative path inside the "
                         "dataset (no leading / and no ..)")
    return path.with_suffix(suffix)


def write_dataset(images: Sequence[AnnotatedImage], fmt: str, out_dir: str | os.PathLike[str],
                  *, tolerance: float = 1.0, segmentation: str = "rle",
                  image_root: str | os.PathLike[str] | None = None,
                  categories: Sequence[str] | None = None) -> list[Path]:
    """Write ``images`` as a ``fmt`` dataset into ``out_dir`` (created if needed); returns the
    files written.

    * ``"coco"``: one file, ``annotations.json`` (:func:`~mobile_sam.formats.coco_dataset`,
      with ``segmentation`` ``"rle"`` or ``"polygon"``);
    * ``"yolo"``: one ``.txt`` per image (its ``file_name`` with the suffix replaced, empty
      for an image without objects) and ``classes.txt`` (one label a line, line ``i`` is
      class ``i``), see :func:`~mobile_sam.formats.yolo_lines`;
    * ``"labelme"``: one ``.json`` per image, see :func:`~mobile_sam.formats.labelme_json`.
      With ``image_root`` (the folder the ``file_name`` s are relative to) each file's
      ``imagePath`` is the image's path relative to that JSON file, so LabelMe opens it;
      otherwise it is the ``file_name``.

    ``categories``: the label order (COCO category ids from 1, YOLO class indices from 0);
    default: the labels in order of first appearance. Polygons are simplified at
    ``tolerance`` pixels.
    Everything is checked and formatted before the first file is written, and each file is
    written atomically, so bad input leaves no output.
    """
    from ..io import atomic_write
    from .coco import coco_dataset
    from .labelme import labelme_json
    from .yolo import yolo_lines

    check_format(fmt)
    check_segmentation(segmentation)
    out = Path(out_dir)
    files: dict[PurePosixPath, bytes] = {}
    owner: dict[PurePosixPath, str] = {}

    def add(rel: PurePosixPath, data: bytes, image: str) -> None:
        if rel in files:
            raise ValueError(f"images {owner[rel]!r} and {image!r} would both be written to "
                             f"{out / rel}; give them different file names")
        files[rel] = data
        owner[rel] = image

    def as_json(obj: object) -> bytes:
        return (json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")

    if fmt == "coco":
        add(PurePosixPath(COCO_FILE_NAME),
            as_json(coco_dataset(images, segmentation=segmentation, tolerance=tolerance,
                                 categories=categories)),
            "(dataset)")
    elif fmt == "yolo":
        classes = list(categories) if categories is not None else label_names(images)
        add(PurePosixPath(YOLO_CLASSES_FILE_NAME),
            "".join(f"{c}\n" for c in classes).encode("utf-8"), "(class list)")
        for image in images:
            lines = yolo_lines(image, classes, tolerance)
            add(_per_image_path(image.file_name, ".txt"),
                "".join(f"{line}\n" for line in lines).encode("utf-8"), image.file_name)
    else:
        for image in images:
            rel = _per_image_path(image.file_name, ".json")
            image_path = None
            if image_root is not None:
                source = Path(image_root) / image.file_name
                image_path = Path(os.path.relpath(source, (out / rel).parent)).as_posix()
            add(rel, as_json(labelme_json(image, tolerance, image_path=image_path)),
                image.file_name)

    written = []
    for rel, data in files.items():
        target = out.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        written.append(atomic_write(target, _writer(data)))
    return written


def _writer(data: bytes) -> Callable[[IO[bytes]], object]:
    return lambda f: f.write(data)
