"""`mobile-sam eval`: mIoU of a student's masks against a teacher's or ground truth, per prompt type."""
from __future__ import annotations

import argparse
import sys

from ._common import UserError, set_threads


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    # mobile_sam.train is imported in run() only: building the parser is on every command's path.
    p = subparsers.add_parser(
        "eval", help="mIoU of a student's masks against a teacher's or ground-truth annotations",
        description="Prompts are sampled from reference masks (the teacher's, or ground-truth "
                    "annotations); the student (and the teacher) predict from the same prompts; "
                    "the score is the IoU with the teacher's mask and/or the annotation.")
    p.add_argument("--student", required=True, help="vit_t, ... (published weights) or a checkpoint")
    p.add_argument("--teacher", default="vit_h",
                   help="vit_h (default), ... or a checkpoint; 'none' with --annotations scores "
                        "the student against ground truth only")
    p.add_argument("--images", required=True,
                   help="image folder (searched recursively; with --annotations: the folder the "
                        "COCO file_names are relative to)")
    p.add_argument("--annotations", default=None,
                   help="COCO instances JSON: ground-truth masks as the reference (implies "
                        "--reference annotations)")
    p.add_argument("--prompts", default=None,
                   help="comma-separated: point, point2@<pixels>, center, box (default: point, "
                        "point2@100, ..., point2@500, box; with --annotations: box, center)")
    p.add_argument("--out", default=None,
                   help="folder for per_image.csv, per_mask.csv, summary.json, iou_histogram.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", type=int, default=4,
                   help="reference masks from a GRID x GRID grid of teacher seed points")
    p.add_argument("--max-masks", type=int, default=None,
                   help="reference masks per image at most (default 16 teacher masks; every "
                        "annotation)")
    p.add_argument("--reference", default=None, choices=("teacher", "annotations"),
                   help="teacher: grid-seeded teacher masks (default); annotations: ground truth "
                        "(--annotations, else the SA-1B JSON next to each image)")
    p.add_argument("--max-images", type=int, default=None, help="evaluate the first N images")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.coco import CocoDataset
    from ..train.data import list_images
    from ..train.dist import resolve_device
    from ..train.evaluate import (
        DEFAULT_GT_PROMPTS,
        DEFAULT_PROMPTS,
        EvalSettings,
        evaluate,
        format_table,
        parse_prompts,
        write_report,
    )
    from ..train.models import load_any

    reference = args.reference or ("annotations" if args.annotations else "teacher")
    if args.annotations and reference != "annotations":
        raise UserError("--annotations gives ground-truth references: drop --reference teacher")
    no_teacher = args.teacher.lower() == "none"
    if no_teacher and reference == "teacher":
        raise UserError("--teacher none needs ground-truth references (--annotations)")
    default_prompts = DEFAULT_GT_PROMPTS if reference == "annotations" else DEFAULT_PROMPTS
    max_masks = args.max_masks if args.max_masks is not None else (
        16 if reference == "teacher" else None)
    settings = EvalSettings(prompts=tuple(parse_prompts(args.prompts or default_prompts)),
                            seed=args.seed, grid=args.grid, max_masks=max_masks,
                            reference=reference)
    settings.check()
    set_threads(args.threads)
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images must be >= 1, got {args.max_images}")
    coco = CocoDataset(args.annotations, args.images) if args.annotations else None
    items = (coco.items if coco is not None else list_images(args.images))[: args.max_images]
    device = resolve_device(args.device)
    teacher = None if no_teacher else load_any(args.teacher)
    student = load_any(args.student)
    report = evaluate(student.model.to(device),
                      teacher.model.to(device) if teacher is not None else None, items,
                      settings, annotations=coco, progress=args.progress)
    print(format_table(report))
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable images:", file=sys.stderr)
        for s in report.skipped[:10]:
            print(f"  {s['image']}: {s['error']}", file=sys.stderr)
    if args.out:
        meta: dict[str, object] = {"student": {"source": student.source, "sha256": student.sha256}}
        if teacher is not None:
            meta["teacher"] = {"source": teacher.source, "sha256": teacher.sha256}
        if coco is not None:
            meta["annotations"] = str(coco.json_path)
        paths = write_report(report, args.out, meta)
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
