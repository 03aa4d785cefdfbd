"""`mobile-sam eval`: mIoU of a student's masks against a teacher's, per prompt type."""
from __future__ import annotations

import argparse
import sys

from ._common import UserError, set_threads


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    # mobile_sam.train is imported in run() only: building the parser is on every command's path.
    p = subparsers.add_parser(
        "eval", help="mIoU of a student's masks against a teacher's (the MobileSAM protocol)",
        description="Prompts are sampled from the teacher's reference masks; teacher and "
                    "student predict from the same prompts; the score is the IoU of the two.")
    p.add_argument("--student", required=True, help="vit_t, ... (published weights) or a checkpoint")
    p.add_argument("--teacher", default="vit_h", help="vit_h (default), ... or a checkpoint")
    p.add_argument("--images", required=True, help="image folder (searched recursively)")
    p.add_argument("--prompts", default=None,
                   help="comma-separated: point, point2@<pixels>, box (default: point, "
                        "point2@100, point2@200, ..., point2@500, box)")
    p.add_argument("--out", default=None,
                   help="folder for per_image.csv, per_mask.csv, summary.json, iou_histogram.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", type=int, default=4,
                   help="reference masks from a GRID x GRID grid of teacher seed points")
    p.add_argument("--max-masks", type=int, default=16, help="reference masks per image at most")
    p.add_argument("--reference", default="teacher", choices=("teacher", "annotations"),
                   help="teacher: grid-seeded teacher masks; annotations: SA-1B JSON masks")
    p.add_argument("--max-images", type=int, default=None, help="evaluate the first N images")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.data import list_images
    from ..train.dist import resolve_device
    from ..train.evaluate import (
        DEFAULT_PROMPTS,
        EvalSettings,
        evaluate,
        format_table,
        parse_prompts,
        write_report,
    )
    from ..train.models import load_any

    settings = EvalSettings(prompts=tuple(parse_prompts(args.prompts or DEFAULT_PROMPTS)), seed=args.seed,
                            grid=args.grid, max_masks=args.max_masks, reference=args.reference)
    settings.check()
    set_threads(args.threads)
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images must be >= 1, got {args.max_images}")
    items = list_images(args.images)[: args.max_images]
    device = resolve_device(args.device)
    teacher = load_any(args.teacher)
    student = load_any(args.student)
    report = evaluate(student.model.to(device), teacher.model.to(device), items, settings,
                      progress=args.progress)
    print(format_table(report))
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable images:", file=sys.stderr)
        for s in report.skipped[:10]:
            print(f"  {s['image']}: {s['error']}", file=sys.stderr)
    if args.out:
        meta = {"student": {"source": student.source, "sha256": student.sha256},
                "teacher": {"source": teacher.source, "sha256": teacher.sha256}}
        paths = write_report(report, args.out, meta)
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
