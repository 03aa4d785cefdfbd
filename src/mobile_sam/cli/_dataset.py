"""`--format coco|yolo|labelme` for `segment` and `everything`: a dataset of the whole run.

The dataset goes to `<out>/<format>/`, beside the per-image outputs:

* coco: `annotations.json`, one COCO file for every image of the run (pycocotools loads it);
* yolo: `classes.txt` and one `<name>.txt` per image (YOLO-seg polygons), input folders
  mirrored;
* labelme: one `<name>.json` per image (polygon shapes), input folders mirrored, each
  `imagePath` pointing at the input image.

Every mask gets the run's `--label` (default "object"); with prompts, only the best mask of
each object is exported. Images are turned into their dataset part as they are done, so a long
run keeps no masks in memory.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..api import Result
    from ..formats import AnnotatedImage

def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of pixels >= 0, got {text!r}")
    return value


def _label(text: str) -> str:
    if not text.strip() or "\n" in text:
        raise argparse.ArgumentTypeError(f"expected a non-empty one-line name, got {text!r}")
    return text


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset options; `check_dataset_arguments` checks how they combine."""
    from ..formats import FORMATS, SEGMENTATIONS

    group = parser.add_argument_group(
        "dataset export", "also write a dataset of the whole run into <out>/<format>/")
    group.add_argument("--format", dest="dataset_format", choices=FORMATS, default=None,
                       help="coco: one annotations.json; yolo: classes.txt + one .txt per "
                            "image; labelme: one .json per image")
    group.add_argument("--label", type=_label, default="object",
                       help="label (category) of every mask of the run (default: object)")
    group.add_argument("--tolerance", type=_tolerance, default=1.0, metavar="PX",
                       help="polygon simplification in pixels (default: 1; 0 keeps every "
                            "corner)")
    group.add_argument("--segmentation", choices=SEGMENTATIONS, default=None,
                       help="COCO masks as compressed RLE (default, exact) or polygons "
                            "(holes filled)")


def check_dataset_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.segmentation is not None and args.dataset_format != "coco":
        parser.error("--segmentation applies to --format coco only")


class DatasetWriter:
    """Collects each image's part of the run's dataset and writes it (see the module
    docstring). `add` per image done, `finish` once at the end."""

    def __init__(self, args: argparse.Namespace, out: Path, images: list[Path]) -> None:
        self.format: str = args.dataset_format
        self.folder = out / self.format
        self.label: str = args.label
        self.tolerance: float = args.tolerance
        self.segmentation: str = args.segmentation or "rle"
        absolute = [os.path.abspath(p) for p in images]
        self.root = Path(os.path.commonpath([os.path.dirname(p) for p in absolute])) \
            if absolute else out
        self._coco: dict[int, dict[str, Any]] = {}  # input index -> that image's COCO part

    def add(self, index: int, result: Result, file_name: str) -> None:
        """Add the result of input `index` (its position among the run's images)."""
        result.names = {0: self.label}
        self._add(index, result.to_annotated_image(file_name))

    def add_saved(self, index: int, json_path: Path, file_name: str) -> None:
        """Add an image done by an earlier run, from its `everything` JSON (COCO RLE)."""
        import json

        from ..formats import AnnotatedImage, Annotation
        from ..masks import coco_to_mask

        doc = json.loads(json_path.read_text(encoding="utf-8"))
        info = doc["image"]
        self._add(index, AnnotatedImage(file_name, int(info["height"]), int(info["width"]), [
            Annotation(coco_to_mask(a["segmentation"]), self.label, a.get("predicted_iou"))
            for a in doc["annotations"]
        ]))

    def _add(self, index: int, image: AnnotatedImage) -> None:
        from ..formats import coco_dataset, write_dataset

        if self.format == "coco":
            self._coco[index] = coco_dataset([image], segmentation=self.segmentation,
                                             tolerance=self.tolerance, categories=[self.label])
        else:
            write_dataset([image], self.format, self.folder, tolerance=self.tolerance,
                          image_root=self.root, categories=[self.label])

    def finish(self) -> Path:
        """Write what is left (the COCO file); returns the dataset's file or folder."""
        from ..formats import coco_dataset, merge_coco_datasets, write_dataset
        from ..formats.dataset import COCO_FILE_NAME
        from ..io import save_json

        if self.format != "coco":
            if not self.folder.exists():  # no image done: still the class list
                write_dataset([], self.format, self.folder, categories=[self.label])
            return self.folder
        parts = [self._coco[i] for i in sorted(self._coco)]
        if not parts:  # no image done: a dataset without images
            parts = [coco_dataset([], categories=[self.label])]
        self.folder.mkdir(parents=True, exist_ok=True)
        return save_json(self.folder / COCO_FILE_NAME, merge_coco_datasets(parts))
