"""Decoupled distillation: train a small image encoder to reproduce cached teacher embeddings.

The student is a whole `Sam` whose prompt encoder and mask decoder are the teacher's (copied
from the cache, frozen); only its image encoder learns, from the MSE between its embedding
and the teacher's (the MobileSAM recipe). Optional, beyond the paper: a prompt-in-the-loop
mask loss (`prompt_loss_weight`), and a decoder fine-tune stage with the encoder frozen.

Mechanics: AdamW with linear warm-up then cosine decay; gradient accumulation; mixed
precision (fp16 autocast + GradScaler) on CUDA; DistributedDataParallel when started by
torchrun (gloo on CPU, NCCL on GPU). A global batch is batch_size × accumulate × world_size
samples. Checkpoints hold the run config, model, optimizer and scaler; the learning rate,
the sample order and every random draw are functions of the step, so `resume` continues
exactly where an uninterrupted run would be.

Run folder: config.json, log.jsonl (one record per step, one per validation), loss.png,
checkpoints/step_XXXXXXXX.pt, and at the end student.pt (+ student.json). A checkpoint is
`{"config": <student SamConfig>, "model", "run_config", "optimizer", "scaler", "step"}`, so
`load_sam` (and `mobile-sam eval --student`) read it as a model too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..build import VARIANTS, SamConfig, build_sam, config_from_dict, config_to_dict, safe_load
from ..io import atomic_write, save_json
from . import dist, sync_bn
from .data import CachedEmbeddingDataset, image_exists, split_indices
from .models import check_student_fits, load_any, load_prompt_decoder, save_model
from .plot import loss_curve_png
from .schedule import lr_at, micro_batches, rank_order, step_seed
from .sources import as_location, join
from .teacher_cache import CacheError, EmbeddingCache

CHECKPOINT_FORMAT = "mobile_sam.distill_checkpoint/1"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters: everything that changes the numbers. A checkpoint stores them and a
    resume with different values is refused."""

    epochs: int = 8
    batch_size: int = 8  # per process and micro-batch
    accumulate: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int | None = None  # optimizer steps; None: 5% of the run
    min_lr_ratio: float = 0.01
    val_fraction: float = 0.01
    seed: int = 0
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
    stage: str = "encoder"  # encoder: distil the encoder | decoder: fine-tune the decoder
    prompt_loss_weight: float = 0.0
    prompts_per_image: int = 2
    prompt_loss: str = "kl"  # kl | mse: distance of the student's mask logits to the teacher's
    prompt_iou_weight: float = 1.0  # weight of the IoU-prediction MSE inside the prompt loss
    prompt_refine: int = 0  # extra prompt rounds from the student/teacher disagreement (EdgeSAM)
    sync_bn: bool = False  # BatchNorm statistics over all processes' images (sync_bn.py)

    def check(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size,
                    "accumulate": self.accumulate, "prompts_per_image": self.prompts_per_image}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {value}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0, weight decay >= 0 and 0 <= min_lr_ratio <= 1; got "
                             f"{self.lr}, {self.weight_decay}, {self.min_lr_ratio}")
        if self.warmup is not None and self.warmup < 0:
            raise ValueError(f"warmup must be >= 0 steps, got {self.warmup}")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {self.precision!r}")
        if self.stage not in ("encoder", "decoder"):
            raise ValueError(f"stage must be 'encoder' or 'decoder', got {self.stage!r}")
        if self.prompt_loss not in ("kl", "mse"):
            raise ValueError(f"prompt loss must be kl or mse, got {self.prompt_loss!r}")
        if self.prompt_iou_weight < 0 or self.prompt_refine < 0:
            raise ValueError(f"need prompt IoU weight >= 0 and prompt refine rounds >= 0, got "
                             f"{self.prompt_iou_weight}, {self.prompt_refine}")
        if self.prompt_loss_weight < 0:
            raise ValueError(f"prompt loss weight must be >= 0, got {self.prompt_loss_weight}")
        if self.stage == "decoder" and self.prompt_loss_weight <= 0:
            raise ValueError("the decoder stage learns from the prompt loss only: "
                             "give --prompt-loss-weight > 0")


@dataclass(frozen=True)
class RunOptions:
    """Operational settings: they do not change the numbers, so they may differ on resume."""

    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    workers: int = 2
    stop_after: int | None = None  # end this invocation after so many steps (with a checkpoint)
    checkpoint_minutes: float | None = None  # also checkpoint when this long since the last one
    stop_signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")  # checkpoint and stop on these
    progress: bool = True
    images: str | None = None  # image folder, when it moved since the cache was built


@dataclass
class TrainResult:
    step: int
    total_steps: int
    finished: bool
    last_loss: float
    run_dir: Path
    student_path: Path | None


# ----------------------------------------------------------------------------- setup


def make_student(spec: str, seed: int) -> tuple[nn.Module, SamConfig, str]:
    """A student from a variant name or a config JSON (fresh weights, seeded) or from any
    checkpoint `load_sam` reads (its weights). Returns (model, config, description)."""
    path = Path(spec).expanduser()
    if spec in VARIANTS or (path.suffix == ".json" and path.is_file()):
        if spec in VARIANTS:
            config = VARIANTS[spec]
        else:
            try:
                config = config_from_dict(json.loads(path.read_text("utf-8")), source=spec)
            except ValueError as exc:
                raise ValueError(f"--student {spec}: {exc}") from None
        torch.manual_seed(seed)
        return build_sam(config), config, f"random init of {config.name} (seed {seed})"
    loaded = load_any(spec)
    return loaded.model, loaded.config, f"weights with sha256 {loaded.sha256}"


def check_teacher(cache: EmbeddingCache, teacher: str) -> None:
    """Refuse a cache made by another teacher than the one named (compared by file sha256;
    a published name is compared by its known sha256, so it needs no download)."""
    from ..weights import find_checkpoint, resolve_checkpoint
    from .models import file_sha256

    spec = find_checkpoint(teacher) if os.path.basename(teacher) == teacher else None
    if spec is not None and not Path(teacher).exists():
        sha = spec.sha256
    else:
        sha = file_sha256(resolve_checkpoint(teacher, download=False))
    if sha != cache.teacher["sha256"]:
        raise CacheError(f"cache {cache.folder} was made with teacher {cache.teacher['source']!r} "
                         f"(sha256 {cache.teacher['sha256'][:12]}…), not with --teacher {teacher} "
                         f"(sha256 {sha[:12]}…)")


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"--precision {precision} needs a CUDA device; on {device} use fp32")
    return precision


def _param_groups(params: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    # No decay on biases, norms and position/attention-bias tables (1-D or named tables).
    no_decay = ("attention_biases", "rel_pos", "pos_embed")
    decay = [p for n, p in params if p.ndim >= 2 and not any(k in n for k in no_decay)]
    rest = [p for n, p in params if not (p.ndim >= 2 and not any(k in n for k in no_decay))]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _trainable(model: nn.Module, stage: str) -> tuple[nn.Module, list[tuple[str, nn.Parameter]]]:
    """The module that learns in this stage and its parameters (others are frozen)."""
    for p in model.parameters():
        p.requires_grad_(False)
    module = model.image_encoder if stage == "encoder" else model.mask_decoder
    # TinyViT's classifier (`norm_head`, `head`) is in the checkpoint but not in the forward.
    params = [(n, p) for n, p in module.named_parameters()
              if not n.startswith(("head.", "norm_head."))]
    for _, p in params:
        p.requires_grad_(True)
    return module, params


def _checkpoints(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("step_*.pt"))


def _load_checkpoint(path: Path) -> dict[str, Any]:
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a distillation checkpoint")
    return ckpt


def _config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _config_diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    norm = (lambda v: list(v) if isinstance(v, tuple) else v)
    return [] if norm(old) == norm(new) else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


# ----------------------------------------------------------------------------- the loop


class _Log:
    """log.jsonl (rank 0): one JSON record per line; on resume, records after the resumed
    step are dropped so the file always describes the run that produced the weights."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None) -> None:
        self.path, self.enabled = path, enabled
        self.records: list[dict[str, Any]] = []
        if not enabled:
            return
        if resume_step is not None and path.is_file():
            lines = path.read_text("utf-8").splitlines()
            self.records = [r for r in map(json.loads, filter(None, lines))
                            if r["step"] <= resume_step]
        text = "".join(json.dumps(r) + "\n" for r in self.records).encode()
        atomic_write(path, lambda f: f.write(text))

    def add(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self, png: Path) -> None:
        if not self.enabled:
            return
        series = {"train loss": [(r["step"], r["loss"]) for r in self.records if "loss" in r],
                  "val loss": [(r["step"], r["val_loss"]) for r in self.records
                               if "val_loss" in r]}
        loss_curve_png(png, {k: v for k, v in series.items() if v}, title="distillation loss")


def train(cache_dir: str | os.PathLike[str], student: str, out: str | os.PathLike[str],
          config: TrainConfig = TrainConfig(), *, teacher: str | None = None,
          resume: bool = False, options: RunOptions = RunOptions(),
          info: dist.DistInfo | None = None) -> TrainResult:
    """Distil `student` from the teacher embeddings in `cache_dir` into the run folder `out`.

    Every check that can fail (cache, teacher, student shape, run folder, resume config)
    runs before the first step. See the module docstring for what is written.
    """
    info = info or dist.DistInfo(0, 1, 0, torch.device("cpu"))
    config.check()
    if options.checkpoint_every < 1 or options.keep_checkpoints < 1 or options.workers < 0:
        raise ValueError("--checkpoint-every and --keep-checkpoints must be >= 1, --workers >= 0")
    if options.checkpoint_minutes is not None and not options.checkpoint_minutes > 0:
        raise ValueError(f"--checkpoint-minutes must be > 0, got {options.checkpoint_minutes}")
    cache = EmbeddingCache.open(cache_dir)
    if teacher is not None:
        check_teacher(cache, teacher)
    teacher_config = config_from_dict(cache.teacher["config"], source=str(cache.folder))
    model, student_config, student_desc = make_student(student, config.seed)
    check_student_fits(student_config, teacher_config, cache.embedding_shape, cache.image_size)
    if config.stage == "encoder":
        load_prompt_decoder(model, cache.prompt_decoder(), source=str(cache.folder))

    root = as_location(options.images) if options.images else cache.image_root
    rels = [cache.entries[group[0]].rel for group in cache.groups]
    missing = [rel for rel in rels if not image_exists(join(root, rel))]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the cache's {len(rels)} images are missing "
                                f"under {root} (e.g. {missing[:3]}); pass --images if they moved")

    # Images (not cached views) are split, so no view of a held-out image is trained on.
    train_idx, val_idx = split_indices(len(cache.groups), config.val_fraction, config.seed)
    per_step = config.batch_size * config.accumulate
    global_batch = per_step * info.world_size
    steps_per_epoch = len(train_idx) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"the training split has {len(train_idx)} images, fewer than one global "
                         f"batch of {global_batch} (batch {config.batch_size} x accumulate "
                         f"{config.accumulate} x {info.world_size} processes)")
    total_steps = steps_per_epoch * config.epochs
    warmup = config.warmup if config.warmup is not None else round(0.05 * total_steps)
    precision = _resolve_precision(config.precision, info.device)
    hyper = dataclasses.replace(config, warmup=warmup, precision=precision)
    run_config = {
        "student": config_to_dict(student_config),
        "student_init": student_desc,
        "teacher": {k: cache.teacher[k] for k in ("source", "sha256")},
        "cache_manifest_sha256": cache.manifest_sha256,
        "hyper": dataclasses.asdict(hyper),
        "world_size": info.world_size,
        "global_batch": global_batch,
        "train_images": len(train_idx),
        "val_images": len(val_idx),
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
    }

    run = Path(out).expanduser()
    existing = _checkpoints(run)
    ckpt = None
    if resume:
        if not existing:
            raise FileNotFoundError(f"--resume: no checkpoint in {run / 'checkpoints'}")
        ckpt = _load_checkpoint(existing[-1])
        diff = _config_diff(ckpt["run_config"], run_config)
        if diff:
            raise ValueError(f"--resume: {existing[-1]} was trained with another config; "
                             "differences (checkpoint -> now): " + "; ".join(diff[:6]))
    elif existing:
        raise FileExistsError(f"{run} already holds a run ({len(existing)} checkpoints); pass "
                              "--resume to continue it or choose another --out")
    if info.is_main:
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_json(run / "config.json", run_config, indent=2)
    dist.barrier()

    return _Trainer(model, cache, train_idx, val_idx, hyper, options, info, run, run_config,
                    ckpt).run()


class _StopSignals:
    """Within the block, the named signals (SIGTERM, SIGUSR1: what SLURM sends before a
    pre-emption or the time limit, with `--signal=USR1@120`) only set `received`; the trainer
    then checkpoints and stops at the end of the step. Outside the main thread (where Python
    cannot install handlers) nothing is installed."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names, self.received = names, False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True

    def __enter__(self) -> _StopSignals:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.names:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class _Trainer:
    def __init__(self, model: nn.Module, cache: EmbeddingCache, train_idx: list[int],
                 val_idx: list[int], hp: TrainConfig, options: RunOptions, info: dist.DistInfo,
                 run: Path, run_config: dict[str, Any], ckpt: dict[str, Any] | None) -> None:
        self.model, self.cache, self.hp, self.opt_, self.info = model, cache, hp, options, info
        self.train_idx, self.val_idx, self.run_dir, self.run_config = train_idx, val_idx, run, run_config
        self.steps_per_epoch = run_config["steps_per_epoch"]
        self.total = run_config["total_steps"]
        self.device = info.device
        if ckpt is not None:
            model.load_state_dict(ckpt["model"], strict=True)
        model.to(self.device)
        self.module, params = _trainable(model, hp.stage)
        if hp.sync_bn and info.distributed:
            sync_bn.convert(self.module, self.device)
        self.optimizer = torch.optim.AdamW(_param_groups(params, hp.weight_decay), lr=hp.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=hp.precision == "fp16")
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"]) if ckpt is not None else 0
        self._last_save = time.monotonic()
        self.wrapped: nn.Module = self.module
        if info.distributed:
            self.wrapped = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=hp.stage == "decoder")
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(hp.precision)
        self.log = _Log(run / "log.jsonl", info.is_main, self.step if ckpt is not None else None)
        self.dataset = CachedEmbeddingDataset(cache, range(len(cache)), options.images)
        self.prompt_loss = None
        if hp.prompt_loss_weight > 0:
            from .prompt_loss import PromptLoss

            self.prompt_loss = PromptLoss(model, cache.prompt_decoder(), hp.prompts_per_image,
                                          hp.prompt_loss, hp.prompt_iou_weight, hp.prompt_refine)

    # ------------------------------------------------------------------ pieces
    def _amp(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _loader(self, positions: list[int], batch: int) -> Iterator[dict[str, Any]]:
        from torch.utils.data import DataLoader

        batches = [positions[i:i + batch] for i in range(0, len(positions), batch)]
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.opt_.workers,
                            pin_memory=self.device.type == "cuda")
        yield from loader

    def _losses(self, batch: dict[str, Any], sl: slice, seed: int) -> dict[str, torch.Tensor]:
        images = batch["image"][sl].to(self.device, non_blocking=True)
        target = batch["target"][sl].to(self.device, non_blocking=True)
        losses: dict[str, torch.Tensor] = {}
        with self._amp():
            if self.hp.stage == "encoder":
                pred = self.wrapped(images)
                if tuple(pred.shape[1:]) != tuple(target.shape[1:]):
                    raise ValueError(f"student embedding {tuple(pred.shape[1:])} vs teacher "
                                     f"{tuple(target.shape[1:])}")
                losses["mse"] = F.mse_loss(pred.float(), target)
            else:
                with torch.no_grad():
                    pred = self.model.image_encoder(images)
            if self.prompt_loss is not None:
                gen = torch.Generator().manual_seed(seed)
                decoder = self.wrapped if self.hp.stage == "decoder" else None
                losses["mask"] = self.prompt_loss(pred, target, batch["input_hw"][sl], gen, decoder)
        total = losses.get("mse", torch.zeros((), device=self.device))
        if "mask" in losses:
            total = total + self.hp.prompt_loss_weight * losses["mask"]
        losses["loss"] = total
        return losses

    def _set_mode(self) -> None:
        self.model.eval()
        self.module.train()

    def _validate(self, epoch: int) -> None:
        """Mean per-image embedding MSE on the validation split (encoder stage)."""
        if not self.val_idx or self.hp.stage != "encoder":
            return
        self.model.eval()
        if self.info.distributed:  # the training forward uses rank 0's BatchNorm buffers
            for buf in self.module.buffers():
                torch.distributed.broadcast(buf, 0)
        mine = [self.cache.groups[i][0]
                for i in self.val_idx[self.info.rank::self.info.world_size]]
        total = torch.zeros(2, dtype=torch.float64)
        with torch.no_grad():
            for batch in self._loader(mine, self.hp.batch_size):
                with self._amp():
                    pred = self.model.image_encoder(batch["image"].to(self.device))
                err = F.mse_loss(pred.float(), batch["target"].to(self.device), reduction="none")
                total += torch.tensor([float(err.mean(dim=(1, 2, 3)).sum()), len(batch["index"])],
                                      dtype=torch.float64)
        total = dist.all_reduce_sum(total)
        self.log.add({"step": self.step, "epoch": epoch, "val_loss": float(total[0] / total[1])})
        self._set_mode()

    def _save(self) -> None:
        self._last_save = time.monotonic()
        if self.info.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "config": self.run_config["student"],  # so that load_sam reads checkpoints
                "run_config": self.run_config,
                "step": self.step,
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            }
            folder = self.run_dir / "checkpoints"
            atomic_write(folder / f"step_{self.step:08d}.pt", lambda f: torch.save(state, f))
            for old in _checkpoints(self.run_dir)[:-self.opt_.keep_checkpoints]:
                old.unlink(missing_ok=True)
            self.log.plot(self.run_dir / "loss.png")
        dist.barrier()

    def _finish(self) -> Path | None:
        path = None
        if self.info.is_main:
            config = config_from_dict(self.run_config["student"])
            path = save_model(self.run_dir / "student.pt", self.model.cpu(), config)
            last = [r for r in self.log.records if "loss" in r]
            save_json(self.run_dir / "student.json", {
                "config": self.run_config["student"],
                "file": path.name,
                "teacher": self.run_config["teacher"],
                "cache_manifest_sha256": self.run_config["cache_manifest_sha256"],
                "hyper": self.run_config["hyper"],
                "steps": self.step,
                "final_loss": last[-1]["loss"] if last else None,
            }, indent=2)
            self.model.to(self.device)
        dist.barrier()
        return path

    # ------------------------------------------------------------------ loop
    def _events(self) -> tuple[bool, bool]:
        """(a stop signal reached any rank, the checkpoint interval in time has passed on rank
        0), agreed by all ranks: every rank must save and stop at the same step."""
        due = (self.opt_.checkpoint_minutes is not None
               and time.monotonic() - self._last_save >= 60 * self.opt_.checkpoint_minutes)
        flags = torch.tensor([float(self._signal.received), float(due and self.info.is_main)],
                             dtype=torch.float64)
        flags = dist.all_reduce_sum(flags)
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def run(self) -> TrainResult:
        with _StopSignals(self.opt_.stop_signals) as self._signal:
            return self._run()

    def _run(self) -> TrainResult:
        from tqdm import tqdm

        hp, spe = self.hp, self.steps_per_epoch
        per_step = hp.batch_size * hp.accumulate
        start = self.step
        last_loss = float("nan")
        bar = tqdm(total=self.total, initial=start, unit="step", dynamic_ncols=True,
                   desc="distill", disable=not (self.opt_.progress and self.info.is_main))
        t0 = time.perf_counter()
        self._set_mode()
        stopped = False
        while self.step < self.total and not stopped:
            epoch = self.step // spe
            order = rank_order(len(self.train_idx), epoch, hp.seed, self.info.rank,
                               self.info.world_size, per_step, spe)
            skip = (self.step - epoch * spe) * per_step
            positions = [self.cache.view_entry(self.train_idx[i], epoch, hp.seed)
                         for i in order[skip:]]
            for batch in self._loader(positions, per_step):
                last_loss = self._train_step(batch, epoch, t0)
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4g}")
                if self.step % spe == 0:
                    self._validate(epoch)
                if self.step == self.total:
                    break
                signalled, due = self._events()
                saved = self.step % self.opt_.checkpoint_every == 0 or due
                if saved:
                    self._save()
                if signalled or (self.opt_.stop_after is not None
                                 and self.step - start >= self.opt_.stop_after):
                    if not saved:
                        self._save()
                    stopped = True
                    break
        bar.close()
        student_path = None
        if not stopped:
            self._save()
            student_path = self._finish()
        return TrainResult(self.step, self.total, not stopped, last_loss, self.run_dir,
                           student_path)

    def _train_step(self, batch: dict[str, Any], epoch: int, t0: float) -> float:
        hp = self.hp
        seed = step_seed(hp.seed, self.step, self.info.rank)
        torch.manual_seed(seed)  # any global-RNG use (e.g. drop path) is a function of the step
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        slices = micro_batches(len(batch["index"]), hp.accumulate)
        for a, sl in enumerate(slices):
            sync = a == len(slices) - 1 or not self.info.distributed
            ctx = contextlib.nullcontext() if sync else self.wrapped.no_sync()  # type: ignore[operator]
            with ctx:
                losses = self._losses(batch, sl, seed + a)
                self.scaler.scale(losses["loss"] / hp.accumulate).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / hp.accumulate
        if not math.isfinite(sums["loss"]):
            raise RuntimeError(f"loss is {sums['loss']} at step {self.step}; lower --lr")
        lr = lr_at(self.step, hp.lr, hp.warmup or 0, self.run_config["total_steps"],
                   hp.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        names = sorted(sums)
        mean = dist.all_reduce_sum(torch.tensor([sums[k] for k in names], dtype=torch.float64))
        mean = mean / self.info.world_size
        record = {"step": self.step, "epoch": epoch, "lr": lr,
                  "images": self.step * self.run_config["global_batch"],
                  "elapsed_s": round(time.perf_counter() - t0, 3)}
        record.update({k: float(v) for k, v in zip(names, mean)})
        self.log.add(record)
        return record["loss"]


def describe_run(result: TrainResult) -> str:
    """One line for the CLI."""
    if result.finished:
        return (f"trained {result.step} steps, last loss {result.last_loss:.5g}; student written "
                f"to {result.student_path}")
    return (f"stopped after step {result.step} of {result.total_steps} (checkpoint in "
            f"{result.run_dir / 'checkpoints'}); continue with --resume")
