"""`mobile-sam segment IMAGE... (--point X,Y[,LABEL] ... | --box X0,Y0,X1,Y1 ...)`.

Prompts are XY pixels of each image, checked by the rules of `mobile_sam.prompts` (points
within [0, W] x [0, H], edges included; boxes with X1 >= X0 and Y1 >= Y0, meeting the image;
LABEL 1, 0 or -1). All `--point`s (and at most one `--box`) prompt one
object; several `--box`es prompt one object each, decoded in one batched call. Per image,
under --out (input folders mirrored as in `everything`):

* `<name>_mask_<object>.png` (with --multimask: `<name>_mask_<object>_<k>.png`, k = 0..2),
  grayscale, 255 inside the mask;
* `<name>_overlay.png`: the (best) mask of each object tinted over the image, its outline,
  the points (green foreground, red background) and boxes;
* `<name>.json`: the image's file name and size and, per object, its prompt, the index of the
  best mask and each mask's file, score (predicted IoU), XYXY box (from the mask, inclusive
  max), area and COCO RLE (str counts).

With `--format coco|yolo|labelme`, the best mask of each object also goes into a dataset of
the whole run under `<out>/<format>/`, labelled `--label` (see `cli/_dataset.py`).
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..prompts import PromptError, check_boxes, check_inside_image, check_points
from ._common import (
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


def _apply_rule(text: str, check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Apply a rule of `mobile_sam.prompts` to a parsed option; its refusal is an argparse
    error quoting the option's text."""
    try:
        return check(*args, **kwargs)
    except PromptError as err:
        raise argparse.ArgumentTypeError(f"{err} (in {text!r})") from None


def parse_point(text: str) -> tuple[float, float, int]:
    """`X,Y` or `X,Y,LABEL` (LABEL 1 = foreground, the default, 0 = background, -1 = ignored)."""
    parts = text.split(",")
    try:
        if len(parts) not in (2, 3):
            raise ValueError("wrong count")
        x, y = float(parts[0]), float(parts[1])
        label = int(parts[2]) if len(parts) == 3 else 1
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected X,Y or X,Y,LABEL (pixel coordinates, LABEL 1, 0 or -1), got {text!r}"
        ) from None
    _apply_rule(text, check_points, [[x, y]], [label], coords_field="point",
                labels_field="LABEL")
    return x, y, label


def parse_box(text: str) -> tuple[float, float, float, float]:
    """`X0,Y0,X1,Y1` in pixels with X1 >= X0 and Y1 >= Y0."""
    parts = text.split(",")
    try:
        if len(parts) != 4:
            raise ValueError("wrong count")
        x0, y0, x1, y1 = map(float, parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected X0,Y0,X1,Y1 (four pixel coordinates), got {text!r}"
        ) from None
    _apply_rule(text, check_boxes, [x0, y0, x1, y1], "box")
    return x0, y0, x1, y1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment objects from point or box prompts",
        description="Segment objects in images from prompts given in pixels of each image. "
                    "All --point options (plus at most one --box) describe one object; "
                    "without points, each --box is one object. Writes mask PNGs, an overlay "
                    "PNG and a JSON "
                    "(scores, boxes, COCO RLE) per image.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--point", action="append", type=parse_point, default=[],
                        metavar="X,Y[,LABEL]",
                        help="a point on the object (LABEL 1, the default) or off it (0; -1: "
                        "ignored); repeat")
    parser.add_argument("--box", action="append", type=parse_box, default=[],
                        metavar="X0,Y0,X1,Y1", help="a box around an object (XYXY); repeat for "
                        "several objects")
    parser.add_argument("--multimask", action="store_true",
                        help="write SAM's 3 candidate masks per object (best marked in the JSON)")
    parser.add_argument("--out", default="out", metavar="DIR", help="output folder (default: out)")
    add_dataset_arguments(parser)
    add_common_arguments(parser)
    add_backend_arguments(parser)
    parser.set_defaults(func=run, segment_parser=parser)


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.segment_parser
    if not args.point and not args.box:
        parser.error("give at least one --point X,Y[,LABEL] or --box X0,Y0,X1,Y1")
    if args.point and len(args.box) > 1:
        parser.error(f"--point can be combined with one --box only (one object), got "
                     f"{len(args.box)} boxes; several boxes are several objects")
    check_dataset_arguments(args, parser)

    from ..api import SAM, normalize_prompts
    from ..io import load_image

    prompt_args = {
        "points": [[[x, y] for x, y, _ in args.point]] if args.point else None,
        "labels": [[label for *_, label in args.point]] if args.point else None,
        "bboxes": [list(b) for b in args.box] or None,
    }
    prompts = normalize_prompts(**prompt_args)
    points = None if prompts.points is None else prompts.points.reshape(-1, 2)  # --point order
    out = prepare_out_dir(args.out)
    images = [Path(p).expanduser() for p in args.images]
    bases = output_bases(images, out)
    dataset = DatasetWriter(args, out, images) if args.dataset_format else None

    sam = None
    failed = 0
    for index, (image_path, base) in enumerate(zip(images, bases, strict=True)):
        try:
            image = load_image(image_path)
            check_inside_image(image.shape[:2], points, prompts.boxes, image=str(image_path),
                               points_field="--point", boxes_field="--box")
        except (OSError, ValueError) as exc:
            report("segment", str(exc))
            failed += 1
            continue
        if sam is None:
            model = load_model_or_folder(args)  # model errors end the run
            sam = SAM(model, backend=args.backend, precision=args.precision,
                      conversion=conversion_mode(args.precision, one_shot=len(images) == 1))
        try:
            result = sam.predict(image, multimask_output=args.multimask, **prompt_args)[0]
            result.path = str(image_path)
            json_path = _write(result, image_path, base, out)
            if dataset is not None:  # the best mask of each object
                dataset.add(index, result, display_name(image_path, base, out))
        except (OSError, ValueError) as exc:
            report("segment", f"{image_path}: {exc}")
            failed += 1
            continue
        print(f"{image_path}: {len(result)} mask(s) -> {json_path}")
    if dataset is not None:
        try:
            print(f"{dataset.format} dataset -> {dataset.finish()}")
        except (OSError, ValueError) as exc:
            report("segment", f"{dataset.format} dataset not written: {exc}")
            failed += 1
    from ..onnx.runtime import OnnxPredictor

    if sam is not None and not isinstance(sam.predictor, OnnxPredictor):  # export folders
        from ..runtime.background import finish_conversions  # convert nothing, need no torch

        finish_conversions()
    return 1 if failed else 0


def _write(result: Result, image_path: Path, base: Path, out: Path) -> Path:
    from ..io import save_json

    base.parent.mkdir(parents=True, exist_ok=True)
    mask_paths = result.save_masks(base.parent, prefix=base.name)
    result.save(base.parent / f"{base.name}_overlay.png")
    coco = result.to_coco()
    prompts = result.prompts
    per = result.masks_per_object
    objects = []
    for o in range(prompts.num_objects):
        masks = []
        for i in range(o * per, (o + 1) * per):
            masks.append({
                "file": mask_paths[i].name,
                "score": float(result.scores[i]),
                "box": [float(v) for v in result.boxes[i]],
                "area": coco[i]["area"],
                "segmentation": coco[i]["segmentation"],
            })
        objects.append({
            "id": o,
            "prompt": {
                "points": prompts.points[o].tolist() if prompts.points is not None else [],
                "labels": prompts.labels[o].tolist() if prompts.labels is not None else [],
                "box": prompts.boxes[o].tolist() if prompts.boxes is not None else None,
            },
            "best": int(result.best[o] - o * per),
            "masks": masks,
        })
    height, width = result.orig_img.shape[:2]
    doc = {
        "image": {"file_name": display_name(image_path, base, out), "height": height,
                  "width": width},
        "multimask": per > 1,
        "objects": objects,
    }
    json_path = base.parent / f"{base.name}.json"
    return save_json(json_path, doc)
