"""`mobile-sam distill cache|train`: precompute teacher embeddings, then train a student.

Both steps run on one process or, started by `torchrun --nproc_per_node=N -m mobile_sam
distill ...` (or by `srun` with one task per device), on N processes (the cache splits its
shards, training uses DDP). Training checkpoints and stops on SIGTERM / SIGUSR1.
"""
from __future__ import annotations

import argparse
import sys

from ._common import set_threads


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (cuda:<local rank> when available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads per process")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    p.add_argument("--pg-timeout", type=float, default=None, metavar="MINUTES",
                   help="process-group timeout for collectives and barriers (several processes; "
                        "default: torch's)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill", help="distil a small image encoder from a teacher (cache, then train)",
        description="Decoupled distillation (MobileSAM): `cache` precomputes the teacher's "
                    "image embeddings, `train` fits a student encoder to them.")
    steps = parser.add_subparsers(dest="distill_step", metavar="STEP")
    parser.set_defaults(func=lambda args: _no_step(parser))

    c = steps.add_parser("cache", help="precompute the teacher's embeddings (fp16 shards)")
    c.add_argument("--teacher", required=True,
                   help="vit_h, vit_l, vit_b, vit_t (published weights) or a checkpoint path")
    c.add_argument("--images", required=True,
                   help="image folder (searched recursively, .tar shards included), or a "
                        ".txt/.lst file listing image paths (one per line, relative to its "
                        "folder or absolute); local or an fsspec URL (s3://, gs://, file://; "
                        "needs mobile-sam[cloud])")
    c.add_argument("--out", required=True, help="cache folder (resumed when it exists)")
    c.add_argument("--shard-size", type=int, default=64, help="images per shard file")
    c.add_argument("--batch-size", type=int, default=1, help="images per teacher forward")
    c.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                   help="teacher compute precision (fp16/bf16: autocast on CUDA)")
    c.add_argument("--decode-at-size", action="store_true",
                   help="decode large JPEGs at a reduced scale (1/2, 1/4, 1/8) that still covers "
                        "the model's input size: much faster loading, not pixel-identical to "
                        "the predictor's preprocessing; training follows the cache's setting")
    c.add_argument("--cache-codec", default="fp16", choices=("fp16", "int8"),
                   help="how embeddings are stored: fp16 (2 MiB per 256x64x64 embedding) or "
                        "int8 with a float32 scale per channel (half that; each value within "
                        "max|channel|/254 of the teacher's)")
    c.add_argument("--views", type=int, default=1, metavar="K",
                   help="cache K views per image: the image itself and K-1 augmented views "
                        "(horizontal flip, scale-jitter crop; seed recorded per entry); "
                        "training uses one view per image per epoch (default 1: no augmentation)")
    c.add_argument("--verify", action="store_true",
                   help="re-hash every shard of the finished cache against the manifest")
    _common(c)
    c.set_defaults(func=run_cache)

    t = steps.add_parser("train", help="train a student encoder on a cache")
    t.add_argument("--cache", required=True, help="folder made by `distill cache`")
    t.add_argument("--student", default="vit_t",
                   help="variant name or config .json (fresh weights), or a checkpoint to start "
                        "from (default vit_t)")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--teacher", default=None,
                   help="optional: refuse the cache unless it was made with this teacher")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--batch-size", type=int, default=8, help="images per process per micro-batch")
    t.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    t.add_argument("--weight-decay", type=float, default=0.05)
    t.add_argument("--warmup", type=int, default=None,
                   help="warm-up optimizer steps (default: 5%% of the run)")
    t.add_argument("--min-lr-ratio", type=float, default=0.01,
                   help="final learning rate as a fraction of --lr (cosine decay)")
    t.add_argument("--val-fraction", type=float, default=0.01, help="images held out (seeded)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="auto: fp16 mixed precision on CUDA, fp32 on CPU")
    t.add_argument("--stage", default="encoder", choices=("encoder", "decoder"),
                   help="encoder: distil the image encoder; decoder: fine-tune the mask decoder "
                        "with the encoder frozen (needs --prompt-loss-weight)")
    t.add_argument("--prompt-loss-weight", type=float, default=0.0,
                   help="add a prompt-in-the-loop mask loss with this weight (0: off, the paper)")
    t.add_argument("--prompts-per-image", type=int, default=2)
    t.add_argument("--prompt-loss", default="kl", choices=("kl", "mse"),
                   help="distance of the student's mask logits to the teacher's: kl (Bernoulli "
                        "KL of the probabilities) or mse (on the logits); both are 0 at the teacher")
    t.add_argument("--prompt-iou-weight", type=float, default=1.0,
                   help="weight of the IoU-prediction MSE (student vs teacher) in the prompt loss")
    t.add_argument("--prompt-refine", type=int, default=0,
                   help="extra prompt rounds, each adding a point where the student's and the "
                        "teacher's masks disagree (EdgeSAM); 0: off")
    t.add_argument("--sync-bn", action="store_true",
                   help="BatchNorm statistics over all processes' images (SyncBatchNorm on CUDA, "
                        "an all-reduce of the batch sums on CPU/gloo): N processes x batch b "
                        "then equal one batch of N*b")
    t.add_argument("--checkpoint-every", type=int, default=1000, help="optimizer steps")
    t.add_argument("--checkpoint-minutes", type=float, default=None,
                   help="also checkpoint when this many minutes passed since the last one")
    t.add_argument("--keep-checkpoints", type=int, default=3)
    t.add_argument("--workers", type=int, default=2, help="data-loading processes per rank")
    t.add_argument("--stop-after", type=int, default=None,
                   help="end this invocation after N steps (with a checkpoint); --resume later")
    t.add_argument("--images", default=None,
                   help="image folder (path or fsspec URL), if the images moved since the "
                        "cache was built")
    _common(t)
    t.set_defaults(func=run_train)


def _no_step(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _setup(args: argparse.Namespace):
    from ..train import dist

    set_threads(args.threads)
    if args.pg_timeout is not None and not args.pg_timeout > 0:
        raise ValueError(f"--pg-timeout must be > 0 minutes, got {args.pg_timeout}")
    return dist.init(args.device, args.pg_timeout)


def run_cache(args: argparse.Namespace) -> int:
    from ..train import dist
    from ..train.models import load_any
    from ..train.teacher_cache import build_cache

    info = _setup(args)
    try:
        if not info.is_main:  # rank 0 downloads a missing checkpoint first
            dist.barrier()
        teacher = load_any(args.teacher)
        if info.is_main:
            dist.barrier()
        cache = build_cache(teacher, args.images, args.out, shard_size=args.shard_size,
                            batch_size=args.batch_size, info=info, precision=args.precision,
                            progress=args.progress, decode_at_size=args.decode_at_size,
                            views=args.views, codec=args.cache_codec)
        if cache is not None:
            if args.verify:
                cache.verify()
            size = sum(s["bytes"] for s in cache.manifest["shards"])
            n = len(cache)
            views = f" ({cache.views} views of {len(cache.groups)} images)" if cache.views > 1 else ""
            print(f"cached {n} teacher embeddings {'x'.join(map(str, cache.embedding_shape))} "
                  f"{cache.codec}{views} in {cache.folder}: {size / 2**20:.1f} MiB "
                  f"({size / 2**20 / len(cache.groups) * 1000:.0f} MiB per 1000 images)")
            if cache.skipped:
                print(f"skipped {len(cache.skipped)} unreadable images (listed under 'skipped' in "
                      f"{cache.folder / 'manifest.json'}):", file=sys.stderr)
                for s in cache.skipped[:10]:
                    print(f"  {s['rel']}: {s['error']}", file=sys.stderr)
    finally:
        dist.shutdown()
    return 0


def run_train(args: argparse.Namespace) -> int:
    from ..train import dist
    from ..train.distill import RunOptions, TrainConfig, describe_run, train

    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, accumulate=args.accumulate, lr=args.lr,
        weight_decay=args.weight_decay, warmup=args.warmup, min_lr_ratio=args.min_lr_ratio,
        val_fraction=args.val_fraction, seed=args.seed, precision=args.precision,
        stage=args.stage, prompt_loss_weight=args.prompt_loss_weight,
        prompts_per_image=args.prompts_per_image, prompt_loss=args.prompt_loss,
        prompt_iou_weight=args.prompt_iou_weight, prompt_refine=args.prompt_refine,
        sync_bn=args.sync_bn)
    options = RunOptions(checkpoint_every=args.checkpoint_every,
                         keep_checkpoints=args.keep_checkpoints, workers=args.workers,
                         stop_after=args.stop_after, progress=args.progress, images=args.images,
                         checkpoint_minutes=args.checkpoint_minutes)
    config.check()
    info = _setup(args)
    try:
        result = train(args.cache, args.student, args.out, config, teacher=args.teacher,
                       resume=args.resume, options=options, info=info)
        if info.is_main:
            print(describe_run(result))
    finally:
        dist.shutdown()
    return 0
