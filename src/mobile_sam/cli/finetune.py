"""`mobile-sam finetune`: train a model's mask decoder (optionally its encoder) on COCO masks."""
from __future__ import annotations

import argparse

from ._common import set_threads


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    # mobile_sam.train is imported in run() only: building the parser is on every command's path.
    p = subparsers.add_parser(
        "finetune", help="fine-tune a model on your own masks (COCO-format annotations)",
        description="Trains the mask decoder (and with --train-encoder the image encoder) on "
                    "ground-truth masks, with box, point and corrective-point prompts sampled "
                    "from them; reports validation mIoU (box and center-point prompts) per "
                    "epoch and writes RUN/model.pt, which every loader of this package reads.")
    p.add_argument("--data", required=True, help="COCO instances JSON of the training images")
    p.add_argument("--images", required=True, help="folder the COCO file_names are relative to")
    p.add_argument("--model", default="vit_t",
                   help="starting model: vit_t (default), ... or a checkpoint path")
    p.add_argument("--out", required=True, help="run folder (must not hold a run)")
    p.add_argument("--val-data", default=None,
                   help="COCO JSON of validation images (default: hold out --val-fraction)")
    p.add_argument("--val-images", default=None, help="their folder (default: --images)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-prompts", default="box,center",
                   help="prompt types of the validation mIoU (see `mobile-sam eval --prompts`)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (AdamW)")
    p.add_argument("--min-lr-ratio", type=float, default=0.01,
                   help="final learning rate as a fraction of --lr (cosine decay; 1: constant)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--objects-per-image", type=int, default=8,
                   help="annotated objects sampled per image and step")
    p.add_argument("--rounds", type=int, default=3,
                   help="prompt rounds per object: a box or point, then corrective points")
    p.add_argument("--box-probability", type=float, default=0.5,
                   help="chance that an object's first prompt is its box (else a point)")
    p.add_argument("--train-encoder", action="store_true",
                   help="train the image encoder too (BatchNorm statistics stay frozen)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.dist import resolve_device
    from ..train.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(
        epochs=args.epochs, lr=args.lr, min_lr_ratio=args.min_lr_ratio,
        weight_decay=args.weight_decay,
        objects_per_image=args.objects_per_image, rounds=args.rounds,
        box_probability=args.box_probability, train_encoder=args.train_encoder,
        val_fraction=args.val_fraction, val_prompts=args.val_prompts, seed=args.seed)
    config.check()
    set_threads(args.threads)
    result = finetune(args.model, args.data, args.images, args.out, config,
                      val_data=args.val_data, val_images=args.val_images,
                      device=resolve_device(args.device), progress=args.progress)
    print(f"fine-tuned {result.steps} steps; model written to {result.model_path}")
    return 0
