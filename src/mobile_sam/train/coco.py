"""COCO-format instance annotations: ground-truth masks and boxes for evaluation and fine-tuning.

A COCO JSON holds `images` (`id`, `file_name`, `height`, `width`) and `annotations`
(`image_id`, `segmentation`, `bbox` = [x, y, w, h], `iscrowd`). A segmentation is either
polygons (a list of [x0, y0, x1, y1, ...] lists, rasterised here with Pillow's ImageDraw,
whose boundary rule may differ from pycocotools' by a pixel along edges) or RLE (`counts` as
a list: uncompressed; as a string: COCO-compressed), decoded with `mobile_sam.masks`.
Crowd annotations (`iscrowd: 1`) are skipped, as COCO's own evaluation does.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import ImageItem, image_exists
from .sources import as_location, join


@dataclass(frozen=True)
class GroundTruth:
    """One object of an image: mask H, W bool; box XYXY pixels (from the annotation's bbox)."""

    mask: np.ndarray
    box: np.ndarray
    annotation_id: Any
    category_id: Any


def decode_segmentation(seg: Any, height: int, width: int, where: str = "segmentation") -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) -> H, W bool mask.

    Raises ValueError naming `where` for anything else or an RLE of another size."""
    from PIL import Image, ImageDraw

    from ..masks import coco_to_mask, rle_to_mask

    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if [int(v) for v in seg["size"]] != [height, width]:
            raise ValueError(f"{where}: RLE size {seg['size']} but the image is {height}x{width}")
        counts = seg["counts"]
        return coco_to_mask(seg) if isinstance(counts, (str, bytes)) else rle_to_mask(seg)
    if isinstance(seg, list) and all(isinstance(p, list) for p in seg):
        canvas = Image.new("1", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for poly in seg:
            if len(poly) < 6 or len(poly) % 2:
                raise ValueError(f"{where}: a polygon needs >= 3 (x, y) pairs, got {len(poly)} "
                                 "numbers")
            draw.polygon([(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly), 2)],
                         fill=1, outline=1)
        return np.array(canvas, dtype=bool)
    raise ValueError(f"{where}: expected polygons (list of lists) or RLE ({{'size', 'counts'}}), "
                     f"got {type(seg).__name__}")


class CocoDataset:
    """The images of a COCO JSON that have at least one non-crowd annotation, with their
    objects decoded on demand (`objects(item)`)."""

    def __init__(self, json_path: str | os.PathLike[str], images_dir: str | os.PathLike[str]) -> None:
        self.json_path = Path(json_path).expanduser()
        self.images_dir = as_location(images_dir)  # a folder or a folder URL
        try:
            doc = json.loads(self.json_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"annotation file not found: {self.json_path}") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read annotation file {self.json_path}: {exc}") from None
        if not (isinstance(doc, dict) and isinstance(doc.get("images"), list)
                and isinstance(doc.get("annotations"), list)):
            raise ValueError(f"{self.json_path} is not a COCO annotation file (needs 'images' "
                             "and 'annotations' lists)")
        if isinstance(self.images_dir, Path) and not self.images_dir.is_dir():
            raise NotADirectoryError(f"--images must be the folder of the COCO images, got "
                                     f"{self.images_dir}")
        images: dict[Any, dict[str, Any]] = {}
        for i, im in enumerate(doc["images"]):
            if not isinstance(im, dict) or not {"id", "file_name", "height", "width"} <= set(im):
                raise ValueError(f"{self.json_path}: images[{i}] needs id, file_name, height "
                                 "and width")
            images[im["id"]] = im
        self._anns: dict[Any, list[dict[str, Any]]] = {}
        self.crowd = 0
        for i, ann in enumerate(doc["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or "segmentation" not in ann:
                raise ValueError(f"{self.json_path}: annotations[{i}] needs image_id and "
                                 "segmentation")
            if ann["image_id"] not in images:
                raise ValueError(f"{self.json_path}: annotations[{i}] refers to image_id "
                                 f"{ann['image_id']!r}, which is not in 'images'")
            if ann.get("iscrowd", 0):
                self.crowd += 1
                continue
            self._anns.setdefault(ann["image_id"], []).append(ann)
        self._images = {im["file_name"]: im for im in images.values() if im["id"] in self._anns}
        self.items = [ImageItem(join(self.images_dir, name), name)
                      for name in sorted(self._images)]
        if not self.items:
            raise ValueError(f"{self.json_path} has no image with a non-crowd annotation")
        missing = [it.rel for it in self.items if not image_exists(it.path)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of the {len(self.items)} annotated images "
                                    f"are missing under {self.images_dir} (e.g. {missing[:3]})")

    def __len__(self) -> int:
        return len(self.items)

    def objects(self, item: ImageItem, image_hw: Sequence[int] | None = None) -> list[GroundTruth]:
        """The non-crowd objects of an image (annotation order), decoded. `image_hw`: the size
        of the decoded image, checked against the JSON's."""
        im = self._images[item.rel]
        h, w = int(im["height"]), int(im["width"])
        if image_hw is not None and (int(image_hw[0]), int(image_hw[1])) != (h, w):
            raise ValueError(f"{item.path} is {image_hw[0]}x{image_hw[1]} but {self.json_path} "
                             f"says {h}x{w}")
        out = []
        for ann in self._anns[im["id"]]:
            where = f"{self.json_path}: annotation {ann.get('id', '?')}"
            mask = decode_segmentation(ann["segmentation"], h, w, where)
            if not mask.any():
                continue
            bbox = ann.get("bbox")
            if isinstance(bbox, list) and len(bbox) == 4:
                x, y, bw, bh = (float(v) for v in bbox)
                box = np.array([x, y, x + bw, y + bh])
            else:
                ys, xs = np.nonzero(mask)
                box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
            out.append(GroundTruth(mask, box, ann.get("id"), ann.get("category_id")))
        return out
