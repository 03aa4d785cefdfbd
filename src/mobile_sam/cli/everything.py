"""`mobile-sam everything IMAGE|DIR...`: automatic masks for whole images.

Per image: `<name>.json` (COCO-style: the image's file name and size, one annotation per mask
with COCO RLE, area, XYWH bbox, predicted IoU, stability score, prompt point and crop box) and
`<name>_overlay.png` (each mask in its own colour). Folders are walked recursively; outputs
mirror the inputs' folders under --out, so equal file names in different folders never
collide. Images whose outputs exist are skipped unless --overwrite.

`<name>.json` is a record of one image, not a COCO dataset file. With `--format coco|yolo|
labelme`, a dataset of the whole run is also written under `<out>/<format>/` (one COCO
`annotations.json` that pycocotools loads; per-image YOLO `.txt` files with `classes.txt`; per-
image LabelMe `.json` files), skipped images included (read back from their `<name>.json`).
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..prompts import GENERATOR_BOUNDS, PromptError, check_generator_options
from ._common import (
    UserError,
    add_backend_arguments,
    add_common_arguments,
    conversion_mode,
    display_name,
    load_model_or_folder,
    output_bases,
    prepare_out_dir,
    report,
)
from ._dataset import DatasetWriter, add_dataset_arguments, check_dataset_arguments

if TYPE_CHECKING:
    from ..api import Result

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def collect_images(inputs: list[str], exclude: Path | None,
                   on_error: Callable[[str], None]) -> list[Path]:
    """Files as given, folders walked recursively (image extensions only, sorted, hidden
    entries and the `exclude` folder skipped); duplicates removed. Inputs that do not exist
    or folders without images are passed to `on_error` and left out."""
    found: list[Path] = []
    excluded = os.path.realpath(exclude) if exclude is not None else None
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            if excluded is not None and os.path.realpath(path) == excluded:
                raise UserError(f"the output folder {exclude} is also an input folder: the "
                                "next run would read the overlays as images; use another --out")
            files = []
            for folder, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                                 and os.path.realpath(os.path.join(folder, d)) != excluded)
                files += [Path(folder) / n for n in names
                          if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)]
            if not files:
                on_error(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) "
                         f"found in folder {path}")
            found += sorted(files, key=lambda p: p.relative_to(path).as_posix())
        elif path.exists():
            found.append(path)
        else:
            on_error(f"image file not found: {path}")
    unique: dict[str, Path] = {}
    for p in found:
        unique.setdefault(os.path.abspath(p), p)
    return list(unique.values())


# ------------------------------------------------------------------ argument types


def _generator_option(name: str) -> Callable[[str], float]:
    """An argparse type for a generator option: a number of its kind within its range (the
    rules of `mobile_sam.prompts.GENERATOR_BOUNDS`, as on every surface)."""
    bound = GENERATOR_BOUNDS[name]

    def parse(text: str):
        try:
            value = bound.kind(text)
        except ValueError:
            noun = "an integer" if bound.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        try:
            return bound.check(name, value)
        except PromptError:
            raise argparse.ArgumentTypeError(f"must be {bound.expected}, got {text!r}") from None

    return parse


# (option, default, help): the generator's arguments with their original defaults
GENERATOR_OPTIONS = [
    ("points_per_side", 32, "grid points per image side"),
    ("points_per_batch", 64, "prompts decoded together"),
    ("pred_iou_thresh", 0.88, "keep masks with predicted IoU above this"),
    ("stability_score_thresh", 0.95, "keep masks with stability score at least this"),
    ("stability_score_offset", 1.0, "logit offset of the stability score"),
    ("box_nms_thresh", 0.7, "box IoU threshold of the NMS within a crop"),
    ("crop_n_layers", 0, "extra crop layers (layer i has 2**i x 2**i crops)"),
    ("crop_nms_thresh", 0.7, "box IoU threshold of the NMS across crops"),
    ("crop_overlap_ratio", 512 / 1500, "crop overlap (fraction of the short side)"),
    ("crop_n_points_downscale_factor", 1, "points per side divided by this**layer"),
    ("min_mask_region_area", 0, "fill holes / remove islands smaller than this (pixels)"),
]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "everything",
        help="segment everything: automatic masks, COCO JSON + overlay per image",
        description="Automatic mask generation for images and folders (walked recursively: "
                    + ", ".join(e[1:] for e in IMAGE_EXTENSIONS) + "). Writes <name>.json "
                    "(COCO RLE) and <name>_overlay.png per image under --out, mirroring the "
                    "input folders; images already done are skipped unless --overwrite.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE|DIR", help="image files or folders")
    parser.add_argument("--out", default="out", metavar="DIR", help="output folder (default: out)")
    parser.add_argument("--overwrite", action="store_true", help="redo images whose outputs exist")
    group = parser.add_argument_group("mask generator options")
    for name, default, text in GENERATOR_OPTIONS:
        group.add_argument("--" + name.replace("_", "-"), dest=name,
                           type=_generator_option(name), default=default, metavar="N",
                           help=f"{text}: {GENERATOR_BOUNDS[name].expected} "
                                f"(default: {default:g})")
    add_dataset_arguments(parser)
    add_common_arguments(parser)
    add_backend_arguments(parser)
    parser.set_defaults(func=run, everything_parser=parser)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..io import load_image, remove_stale_temporaries

    generator_kwargs = {name: getattr(args, name) for name, *_ in GENERATOR_OPTIONS}
    try:  # options that are valid alone but not together
        check_generator_options(**generator_kwargs)
    except PromptError as err:
        args.everything_parser.error(f"--{err.field.replace('_', '-')}: {err}")
    check_dataset_arguments(args, args.everything_parser)
    out = prepare_out_dir(args.out)
    remove_stale_temporaries(out)  # left by a run that was killed while writing
    failed = 0

    def fail(message: str) -> None:
        nonlocal failed
        failed += 1
        report("everything", message)

    images = collect_images(args.inputs, exclude=out, on_error=fail)
    bases = output_bases(images, out)
    todo = []
    for image, base in zip(images, bases, strict=True):
        done = _json_path(base).is_file() and _overlay_path(base).is_file()
        if args.overwrite or not done:
            todo.append((image, base))
    skipped = len(images) - len(todo)
    dataset = DatasetWriter(args, out, images) if args.dataset_format else None
    position = {base: i for i, base in enumerate(bases)}

    sam = None
    written = 0
    for image_path, base in tqdm(todo, desc="everything", unit="image", disable=None):
        try:
            image = load_image(image_path)
        except (OSError, ValueError) as exc:
            fail(str(exc))
            continue
        if sam is None:
            from ..api import SAM

            sam = SAM(load_model_or_folder(args), backend=args.backend,  # model errors end the run
                      precision=args.precision,
                      conversion=conversion_mode(args.precision, one_shot=False))
        try:
            # progress: a bar of the prompt batches within the image, under the images bar
            result = sam.predict(image, progress=True, **generator_kwargs)[0]
            result.path = str(image_path)
            _write(result, image_path, base, out)
            if dataset is not None:
                dataset.add(position[base], result, display_name(image_path, base, out))
        except (OSError, ValueError) as exc:
            fail(f"{image_path}: {exc}")
            continue
        written += 1
        tqdm.write(f"{image_path}: {len(result)} mask(s) -> {_json_path(base)}")
    if dataset is not None:
        _finish_dataset(dataset, images, bases, out, todo, fail)
    summary = f"{written} image(s) segmented"
    if skipped:
        summary += f", {skipped} skipped (outputs exist; --overwrite to redo them)"
    if failed:
        summary += f", {failed} failed"
    print(summary)
    return 1 if failed else 0


def _finish_dataset(dataset: DatasetWriter, images: list[Path], bases: list[Path], out: Path,
                    todo: list[tuple[Path, Path]], fail: Callable[[str], None]) -> None:
    """Add the images skipped as done (from their JSON) and write the run's dataset."""
    this_run = {base for _, base in todo}
    try:
        for i, (image_path, base) in enumerate(zip(images, bases, strict=True)):
            if base not in this_run:
                dataset.add_saved(i, _json_path(base), display_name(image_path, base, out))
        print(f"{dataset.format} dataset -> {dataset.finish()}")
    except (OSError, ValueError, KeyError) as exc:
        fail(f"{dataset.format} dataset not written: {exc}")


def _json_path(base: Path) -> Path:
    return base.parent / f"{base.name}.json"


def _overlay_path(base: Path) -> Path:
    return base.parent / f"{base.name}_overlay.png"


def _write(result: Result, image_path: Path, base: Path, out: Path) -> None:
    from ..io import save_json

    base.parent.mkdir(parents=True, exist_ok=True)
    height, width = result.orig_img.shape[:2]
    coco = {
        "image": {"file_name": display_name(image_path, base, out), "height": height,
                  "width": width},
        "annotations": result.to_coco(),
    }
    result.save(_overlay_path(base))
    save_json(_json_path(base), coco)  # last: its presence marks the image as done
