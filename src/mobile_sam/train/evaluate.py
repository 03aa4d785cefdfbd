"""mIoU per prompt type: a student against its teacher (the MobileSAM paper's protocol) and
against ground-truth annotations (the COCO protocol of EdgeSAM and EfficientViT-SAM).

For each image:

1. Reference objects (`reference="teacher"`, the default): the teacher's masks from a fixed
   grid of `grid`×`grid` seed points (the automatic generator's grid): for each point, the
   best of the three masks by predicted IoU, at the image's size; masks smaller than
   `min_area` of the image or larger than `max_area` are dropped, then near-duplicates
   (mask IoU > `dedupe_iou`, keeping the higher predicted IoU), and at most `max_masks` are
   kept. `reference="annotations"`: ground truth instead, the non-crowd objects of a COCO
   JSON (`annotations`) or the masks of the SA-1B JSON next to the image (a seeded sample
   of `max_masks` when that is set).
2. From each reference mask, one prompt per prompt type, drawn with generators seeded by
   (seed, image, mask), so results do not depend on the order of anything:
   - `point`: one foreground point uniform over the mask's pixels (multimask output, each
     model's best mask by its predicted IoU, as SAM does for one point);
   - `point2@D`: the same point as `point` plus a second foreground point of the mask whose
     distance to it is within 5% of D pixels (uniform among those, drawn from (seed, image,
     mask, D); the closest to D when there is none); single-mask output;
   - `center`: the mask's pixel farthest from its boundary (maximum of the distance
     transform; ties to the middle of the tied pixels), the usual single-point protocol of
     COCO evaluations; multimask output, best by predicted IoU;
   - `box`: the mask's bounding box (XYXY, inclusive max), or the annotation's own `bbox`
     ([x, y, x + w, y + h]) for COCO annotations; single-mask output.
3. Teacher and student predict from the same prompt; `iou` is the IoU of their binary masks
   (1.0 when both are empty). With ground-truth references, `gt_iou` / `teacher_gt_iou` are
   the IoU of the student's / teacher's mask with the reference mask; the teacher is then
   optional.

mIoU per prompt type is the mean over all (image, mask) pairs. Coordinates are XY pixels of
the original image.
"""
from __future__ import annotations

import csv
import io
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io import ImageLoadError, atomic_write, save_json
from .coco import CocoDataset
from .data import ImageItem, load_annotation_masks, read_image


@dataclass(frozen=True)
class PromptSpec:
    """One prompt type: kind `point`, `point2` (with `distance` in pixels), `center` or `box`."""

    kind: str
    distance: float | None = None

    @property
    def name(self) -> str:
        return f"point2@{self.distance:g}" if self.kind == "point2" else self.kind


def parse_prompts(text: str) -> list[PromptSpec]:
    """`"point,point2@100,point2@200,box"` -> PromptSpecs (ValueError naming a bad item)."""
    specs: list[PromptSpec] = []
    for raw in text.split(","):
        item = raw.strip()
        if item in ("point", "center", "box"):
            specs.append(PromptSpec(item))
        elif item.startswith("point2@"):
            try:
                d = float(item.split("@", 1)[1])
            except ValueError:
                d = float("nan")
            if not math.isfinite(d) or d <= 0:
                raise ValueError(f"--prompts: {item!r} needs a positive pixel distance, "
                                 "e.g. point2@100")
            specs.append(PromptSpec("point2", d))
        else:
            raise ValueError(f"--prompts: unknown prompt type {item!r}; expected point, "
                             "point2@<pixels>, center or box, comma-separated")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"--prompts lists a prompt type twice: {names}")
    return specs


DEFAULT_PROMPTS = "point,point2@100,point2@200,point2@300,point2@400,point2@500,box"
DEFAULT_GT_PROMPTS = "box,center"


@dataclass(frozen=True)
class EvalSettings:
    prompts: tuple[PromptSpec, ...] = tuple(parse_prompts(DEFAULT_PROMPTS))
    seed: int = 0
    grid: int = 4
    max_masks: int | None = 16  # None: every annotation (reference="annotations" only)
    min_area: float = 0.001  # fraction of the image
    max_area: float = 0.95
    dedupe_iou: float = 0.9
    reference: str = "teacher"  # teacher | annotations

    def check(self) -> None:
        if self.grid < 1 or (self.max_masks is not None and self.max_masks < 1):
            raise ValueError(f"--grid and --max-masks must be >= 1, got {self.grid}, {self.max_masks}")
        if self.reference not in ("teacher", "annotations"):
            raise ValueError(f"--reference must be teacher or annotations, got {self.reference!r}")
        if self.reference == "teacher" and self.max_masks is None:
            raise ValueError("teacher reference masks need a --max-masks limit")
        if not self.prompts:
            raise ValueError("--prompts is empty")


@dataclass
class EvalReport:
    settings: EvalSettings
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per (image, mask, prompt)
    images: list[dict[str, Any]] = field(default_factory=list)  # one per image
    skipped: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        """Per prompt type: pairs; against the teacher (when there is one) mIoU, median and the
        fraction of pairs below IoU 0.5; against ground truth (annotation references)
        `gt_miou` of the student and `teacher_gt_miou` of the teacher."""
        out: dict[str, dict[str, float | int | None]] = {}
        for spec in self.settings.prompts:
            rows = [r for r in self.rows if r["prompt"] == spec.name]
            ious = np.array([r["iou"] for r in rows if r["iou"] != ""], dtype=np.float64)
            entry: dict[str, float | int | None] = {
                "pairs": len(rows),
                "miou": float(ious.mean()) if ious.size else None,
                "median": float(np.median(ious)) if ious.size else None,
                "below_0.5": float((ious < 0.5).mean()) if ious.size else None,
            }
            if self.settings.reference == "annotations":
                for key in ("gt_iou", "teacher_gt_iou"):
                    vals = [r[key] for r in rows if r[key] != ""]
                    entry[key.replace("iou", "miou")] = float(np.mean(vals)) if vals else None
            out[spec.name] = entry
        return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; 1.0 when both are empty."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def teacher_reference_masks(predictor: Any, settings: EvalSettings) -> np.ndarray:
    """The teacher's grid-seeded reference masks of the predictor's current image: N, H, W."""
    from ..masks import build_point_grid

    h, w = predictor.original_size
    points = build_point_grid(settings.grid) * np.array([[w, h]])
    low, iou = predictor.predict_point_batch(points)
    best = iou.argmax(axis=1)
    order = np.argsort(-iou[np.arange(len(best)), best], kind="stable")
    logits = predictor.upscale_logits(low[np.arange(len(best)), best][order])
    masks = logits > predictor.mask_threshold
    kept: list[np.ndarray] = []
    for m in masks:
        area = m.sum() / (h * w)
        if not settings.min_area <= area <= settings.max_area:
            continue
        if any(mask_iou(m, k) > settings.dedupe_iou for k in kept):
            continue
        kept.append(m)
        if len(kept) == settings.max_masks:
            break
    return np.stack(kept) if kept else np.zeros((0, h, w), bool)


def sample_prompt(mask: np.ndarray, spec: PromptSpec, key: Sequence[int]) -> dict[str, Any]:
    """Draw a prompt of type `spec` from a non-empty (H, W) bool mask (see module docstring).

    `key` seeds the draws: the first point of `point` and of every `point2@D` is the same
    pixel (drawn from `key` alone), the second point of `point2@D` is drawn from (key, D).
    Returns predictor keyword arguments plus `distance` (of the two points, else None).
    """
    ys, xs = np.nonzero(mask)
    if spec.kind == "box":
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
        return {"box": box, "multimask_output": False, "distance": None}
    if spec.kind == "center":
        x, y = center_point(mask)
        return {"point_coords": np.array([[x, y]], dtype=np.float64),
                "point_labels": np.array([1]), "multimask_output": True, "distance": None}
    i = int(np.random.default_rng(list(key)).integers(len(xs)))
    first = np.array([xs[i], ys[i]], dtype=np.float64)
    if spec.kind == "point":
        return {"point_coords": first[None], "point_labels": np.array([1]),
                "multimask_output": True, "distance": None}
    want = float(spec.distance or 0.0)
    rng = np.random.default_rng([*key, round(want * 1000)])
    dist = np.hypot(xs - first[0], ys - first[1])
    near = np.nonzero(np.abs(dist - want) <= 0.05 * want)[0]
    j = int(rng.choice(near)) if near.size else int(np.argmin(np.abs(dist - want)))
    second = np.array([xs[j], ys[j]], dtype=np.float64)
    return {"point_coords": np.stack([first, second]), "point_labels": np.array([1, 1]),
            "multimask_output": False, "distance": float(dist[j])}


def center_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of a non-empty (H, W) bool mask farthest from its boundary (the
    maximum of the Euclidean distance transform, pixels outside the image counting as
    background). Ties (a rectangle's whole mid-line) go to the tied pixel nearest to the
    ties' mean, then the first in row-major order."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(dist == dist.max())
    j = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
    return int(xs[j]), int(ys[j])


def _predict(predictor: Any, prompt: dict[str, Any]) -> np.ndarray:
    kwargs = {k: v for k, v in prompt.items() if k != "distance"}
    masks, scores, _ = predictor.predict(**kwargs)
    return masks[int(np.argmax(scores))] if prompt["multimask_output"] else masks[0]


def _references(item: ImageItem, teacher: Any, rgb: np.ndarray, settings: EvalSettings,
                index: int, annotations: CocoDataset | None) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(mask, box or None) per reference object of an image (see the module docstring)."""
    if settings.reference == "teacher":
        return [(m, None) for m in teacher_reference_masks(teacher, settings)]
    objects: list[tuple[np.ndarray, np.ndarray | None]]
    if annotations is not None:
        objects = [(o.mask, o.box) for o in annotations.objects(item, rgb.shape[:2])]
    elif item.annotation is None:
        raise ValueError(f"--reference annotations: {item.path} has no SA-1B JSON "
                         f"({item.path.with_suffix('.json').name}) next to it; give a COCO "
                         "file with --annotations")
    else:
        objects = [(m, None) for m in load_annotation_masks(item.annotation, rgb.shape[:2])]
    if settings.max_masks is not None and len(objects) > settings.max_masks:
        pick = np.random.default_rng([settings.seed, index]).choice(len(objects), settings.max_masks,
                                                                    replace=False)
        objects = [objects[i] for i in np.sort(pick)]
    return [(m, b) for m, b in objects if m.any()]


def torch_predictor(model: Any) -> Any:
    """A SamPredictor whose encoder runs in torch eager: the models compared are the torch
    models themselves, never an exported copy (the predictor's `auto` backend may pick one)."""
    import inspect

    from ..predictor import SamPredictor

    if "backend" in inspect.signature(SamPredictor).parameters:
        return SamPredictor(model, backend="torch")
    return SamPredictor(model)


def evaluate(student: Any, teacher: Any | None, items: Sequence[ImageItem],
             settings: EvalSettings = EvalSettings(), *, annotations: CocoDataset | None = None,
             progress: bool = True, warn: Callable[[str], None] | None = None) -> EvalReport:
    """Score `student` against `teacher` (two `Sam` models) on `items`; see the module
    docstring. With `settings.reference == "annotations"` the reference masks are ground
    truth (`annotations`, else the SA-1B JSON next to each image) and each model is also
    scored against them; `teacher` may then be None (ground truth only). Unreadable images
    are skipped, reported through `warn` and listed."""
    from tqdm import tqdm

    settings.check()
    if teacher is None and settings.reference == "teacher":
        raise ValueError("teacher reference masks need a teacher model")
    if teacher is not None and student.img_size != teacher.img_size:
        raise ValueError(f"student takes {student.img_size}² inputs, teacher {teacher.img_size}²")
    say = warn or (lambda m: tqdm.write(m, file=sys.stderr))
    s_pred = torch_predictor(student)
    t_pred = torch_predictor(teacher) if teacher is not None else None
    gt = settings.reference == "annotations"
    report = EvalReport(settings)
    for index, item in enumerate(tqdm(items, desc="eval", unit="img", disable=not progress)):
        try:
            rgb, _ = read_image(item.path)
        except (ImageLoadError, OSError) as exc:
            report.skipped.append({"image": item.rel, "error": str(exc)})
            say(f"skipping: {exc}")
            continue
        s_pred.set_image(rgb)
        if t_pred is not None:
            t_pred.set_image(rgb)
        refs = _references(item, t_pred, rgb, settings, index, annotations)
        per_prompt: dict[str, list[float]] = {s.name: [] for s in settings.prompts}
        for m, (ref, box) in enumerate(refs):
            for spec in settings.prompts:
                prompt = sample_prompt(ref, spec, (settings.seed, index, m))
                if spec.kind == "box" and box is not None:
                    prompt["box"] = box
                s_mask = _predict(s_pred, prompt)
                t_mask = _predict(t_pred, prompt) if t_pred is not None else None
                score = mask_iou(s_mask, ref) if gt else mask_iou(s_mask, t_mask)  # type: ignore[arg-type]
                per_prompt[spec.name].append(score)
                coords = prompt.get("point_coords")
                report.rows.append({
                    "image": item.rel, "mask": m, "mask_area": int(ref.sum()),
                    "prompt": spec.name,
                    "iou": "" if t_mask is None else mask_iou(s_mask, t_mask),
                    "gt_iou": mask_iou(s_mask, ref) if gt else "",
                    "teacher_gt_iou": mask_iou(t_mask, ref) if gt and t_mask is not None else "",
                    "points": "" if coords is None else " ".join(f"{x:g},{y:g}" for x, y in coords),
                    "box": "" if "box" not in prompt else ",".join(f"{v:g}" for v in prompt["box"]),
                    "distance": "" if prompt["distance"] is None else round(prompt["distance"], 2),
                })
        report.images.append({"image": item.rel, "height": rgb.shape[0], "width": rgb.shape[1],
                              "masks": len(refs),
                              **{f"miou_{k}": (float(np.mean(v)) if v else "")
                                 for k, v in per_prompt.items()}})
    if not report.images:
        raise ValueError(f"none of the {len(items)} images could be read")
    return report


def format_table(report: EvalReport) -> str:
    """The summary as an aligned text table (ground-truth columns with annotation references)."""
    summary = report.summary()
    gt = report.settings.reference == "annotations"

    def num(v: float | int | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    head = f"{'prompt':<14}{'pairs':>7}{'mIoU':>9}{'median':>9}{'<0.5':>8}"
    if gt:
        head += f"{'GT mIoU':>10}{'teacher GT':>12}"
    lines = [head]
    for name, s in summary.items():
        line = (f"{name:<14}{s['pairs']:>7}{num(s['miou']):>9}{num(s['median']):>9}"
                f"{num(s['below_0.5']):>8}")
        if gt:
            line += f"{num(s['gt_miou']):>10}{num(s['teacher_gt_miou']):>12}"
        lines.append(line)
    lines.append(f"{len(report.images)} images, {sum(i['masks'] for i in report.images)} "
                 f"reference masks, {len(report.skipped)} skipped"
                 + ("; mIoU columns: student vs teacher, GT: vs the annotations" if gt else ""))
    return "\n".join(lines)


def _csv_bytes(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def write_report(report: EvalReport, out: str | os.PathLike[str],
                 meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """per_image.csv, per_mask.csv, summary.json and iou_histogram.png in `out` (created)."""
    from .plot import histograms_png

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    names = [s.name for s in report.settings.prompts]
    image_cols = ["image", "height", "width", "masks"] + [f"miou_{n}" for n in names]
    mask_cols = ["image", "mask", "mask_area", "prompt", "iou", "gt_iou", "teacher_gt_iou",
                 "points", "box", "distance"]
    paths = {
        "per_image": atomic_write(out / "per_image.csv",
                                  lambda f: f.write(_csv_bytes(report.images, image_cols))),
        "per_mask": atomic_write(out / "per_mask.csv",
                                 lambda f: f.write(_csv_bytes(report.rows, mask_cols))),
    }
    settings = asdict(report.settings)
    settings["prompts"] = names
    paths["summary"] = save_json(out / "summary.json", {
        "summary": report.summary(), "images": len(report.images),
        "reference_masks": sum(i["masks"] for i in report.images),
        "skipped": report.skipped, "settings": settings, **(meta or {}),
    }, indent=2)
    key, what = ("gt_iou", "ground truth") if report.settings.reference == "annotations" else (
        "iou", "teacher")
    values = {n: [r[key] for r in report.rows if r["prompt"] == n] for n in names}
    paths["histogram"] = histograms_png(out / "iou_histogram.png", values,
                                        title=f"IoU of student vs {what} masks")
    return paths
