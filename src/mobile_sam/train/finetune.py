"""Fine-tune a SAM model on your own ground-truth masks (COCO-format annotations).

The mask decoder learns (and, with `train_encoder`, the image encoder too; the prompt encoder
stays as it is) from prompts sampled from the ground-truth masks, as SAM was trained:

1. per image, up to `objects_per_image` annotated objects (a seeded sample);
2. round 1: per object, with probability `box_probability` its annotation box, else one
   positive point uniform over its mask; one point gets three masks (multimask output) and
   only the best of them (lowest loss) is trained, as SAM does for ambiguous prompts;
3. rounds 2..`rounds`: one corrective point per object where the previous prediction and the
   mask disagree (positive on a miss, negative on a false alarm), with the previous
   low-res logits as the mask input; single-mask output;
4. loss per round: soft dice + `bce_weight` × BCE between the low-res logits and the mask
   (area-averaged to the low-res grid, padding ignored) + `iou_weight` × MSE between the IoU
   head's prediction and the prediction's actual IoU with the mask. BCE has a small weight
   (0.1) because at equal weight, from a decoder whose first masks are poor, it drives every
   logit negative (most cells are background) before dice can act: measured on the test
   set, a random tiny decoder went to empty masks with BCE + dice and learned with dice +
   0.1 BCE.

AdamW, linear warm-up over the first 5% of the steps then cosine decay to `min_lr_ratio` × lr;
one image per step.
Before training and after every epoch, the validation images are scored with
`mobile_sam.train.evaluate` against their ground truth (box and center-point prompts by
default) and logged. Outputs in the run folder: `log.jsonl`, `model.pt` (after every epoch;
for a built-in variant a plain state dict in the official layout, else `{"config",
"model"}`: every loader of this package reads it) and `metrics.json`.

The image encoder runs in eval mode even when it learns (BatchNorm statistics frozen: one
image per step is too few to estimate them).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io import atomic_write, save_json
from .coco import CocoDataset
from .data import ImageItem, model_input, read_image, split_indices
from .evaluate import EvalSettings, PromptSpec, evaluate, parse_prompts
from .losses import bce_dice
from .models import save_model
from .prompting import Prompts, decode, error_points, valid_cells
from .schedule import lr_at


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 10
    lr: float = 1e-4
    min_lr_ratio: float = 0.01  # final lr as a fraction of lr (cosine decay); 1: constant
    weight_decay: float = 0.01
    objects_per_image: int = 8
    rounds: int = 3
    box_probability: float = 0.5
    iou_weight: float = 1.0
    bce_weight: float = 0.1
    train_encoder: bool = False
    val_fraction: float = 0.1  # when no separate validation set is given
    val_prompts: str = "box,center"
    seed: int = 0

    def check(self) -> None:
        for name in ("epochs", "objects_per_image", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got "
                                 f"{getattr(self, name)}")
        if not self.lr > 0 or min(self.weight_decay, self.iou_weight, self.bce_weight) < 0:
            raise ValueError(f"need lr > 0 and weight decay, IoU and BCE weights >= 0; got "
                             f"{self.lr}, {self.weight_decay}, {self.iou_weight}, "
                             f"{self.bce_weight}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.box_probability <= 1:
            raise ValueError(f"--box-probability must be in [0, 1], got {self.box_probability}")
        parse_prompts(self.val_prompts)


@dataclass
class FinetuneResult:
    model_path: Path
    steps: int
    val_miou: list[dict[str, float | None]]  # per evaluation (before training, each epoch)


def low_res_targets(masks: np.ndarray, input_hw: tuple[int, int], image_size: int,
                    side: int) -> torch.Tensor:
    """Ground-truth masks N, H, W bool -> N, side, side in [0, 1]: the fraction of each
    low-res cell the mask covers once resized like the image (longest side to `image_size`,
    bilinear) and zero-padded to image_size²."""
    h, w = input_hw
    m = torch.from_numpy(masks[:, None].astype(np.float32))
    m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    canvas = torch.zeros(len(masks), 1, image_size, image_size)
    canvas[:, :, :h, :w] = m
    return F.adaptive_avg_pool2d(canvas, side)[:, 0]


def _first_prompts(masks: np.ndarray, boxes: np.ndarray, scale_xy: torch.Tensor,
                   box_probability: float, gen: torch.Generator) -> list[tuple[Prompts, list[int]]]:
    """Round-1 prompts, mapped from image pixels to the input frame by `scale_xy` (sx, sy) as
    the predictor maps prompts, grouped (points, boxes) with their object indices."""
    points, point_ids, box_list, box_ids = [], [], [], []
    for k, mask in enumerate(masks):
        if bool(torch.rand((), generator=gen) < box_probability):
            box_list.append(torch.as_tensor(boxes[k], dtype=torch.float32) * scale_xy.repeat(2))
            box_ids.append(k)
        else:
            ys, xs = np.nonzero(mask)
            j = int(torch.randint(len(ys), (1,), generator=gen))
            points.append(torch.tensor([float(xs[j]), float(ys[j])]) * scale_xy)
            point_ids.append(k)
    groups = []
    if points:
        groups.append((Prompts(torch.stack(points)[:, None],
                               torch.ones(len(points), 1, dtype=torch.int64)), point_ids))
    if box_list:
        groups.append((Prompts(boxes=torch.stack(box_list)), box_ids))
    return groups


class _ImageLoss:
    """The loss of one image: every sampled object, every round (steps 2-4 of the module
    docstring)."""

    def __init__(self, model: nn.Module, config: FinetuneConfig) -> None:
        self.model, self.config = model, config
        self.image_size = int(model.image_encoder.img_size)

    def __call__(self, rgb: np.ndarray, objects: Sequence[Any], gen: torch.Generator,
                 device: torch.device) -> torch.Tensor:
        cfg, model = self.config, self.model
        image, input_hw = model_input(rgb, self.image_size)
        with torch.set_grad_enabled(cfg.train_encoder):
            emb = model.image_encoder(torch.from_numpy(image)[None].to(device))
        masks = np.stack([o.mask for o in objects])
        boxes = np.stack([o.box for o in objects])
        side = 4 * int(model.prompt_encoder.image_embedding_size[0])  # low-res grid
        scale = self.image_size / side
        targets = low_res_targets(masks, input_hw, self.image_size, side).to(device)
        valid = valid_cells(side, input_hw, scale, device)
        terms = []
        scale_xy = torch.tensor([input_hw[1] / rgb.shape[1], input_hw[0] / rgb.shape[0]])
        for prompts, ids in _first_prompts(masks, boxes, scale_xy, cfg.box_probability, gen):
            target = targets[ids]
            rows = torch.arange(len(ids), device=device)
            for r in range(cfg.rounds):
                multimask = r == 0 and prompts.boxes is None  # one point: three candidates
                low, iou = decode(model.prompt_encoder, model.mask_decoder, emb, prompts,
                                  multimask)
                per_mask = torch.stack([self._losses(low[:, c], iou[:, c], target, valid)
                                        for c in range(low.shape[1])], dim=1)  # K, M
                best = per_mask.detach().argmin(dim=1)
                terms.append(per_mask[rows, best].mean())
                chosen = low[rows, best].detach()
                if r + 1 < cfg.rounds:
                    coords, labels = error_points(chosen > 0, target > 0.5, valid, gen, scale)
                    prompts = prompts.with_points(coords, labels)
                    prompts.mask_input = chosen[:, None]
        return torch.stack(terms).mean()

    def _losses(self, logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        """Per-object loss K of one candidate mask: BCE + dice + IoU-head MSE."""
        weight = valid.float()
        losses = torch.stack([bce_dice(logits[k:k + 1], target[k:k + 1], weight,
                                       self.config.bce_weight)
                              for k in range(len(logits))])
        with torch.no_grad():
            pred, ref = (logits > 0) & valid, (target > 0.5) & valid
            inter = (pred & ref).flatten(1).sum(1).float()
            union = (pred | ref).flatten(1).sum(1).float()
            actual = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
        return losses + self.config.iou_weight * (iou_pred.float() - actual) ** 2


def _validate(model: nn.Module, data: CocoDataset, items: Sequence[ImageItem],
              prompts: Sequence[PromptSpec], seed: int) -> dict[str, float | None]:
    """Ground-truth mIoU per prompt type on the validation images."""
    settings = EvalSettings(prompts=tuple(prompts), seed=seed, reference="annotations",
                            max_masks=None)
    was_training = model.training
    model.eval()
    summary = evaluate(model, None, items, settings, annotations=data, progress=False,
                       warn=lambda m: None).summary()
    model.train(was_training)
    return {name: s["gt_miou"] for name, s in summary.items()}  # type: ignore[misc]


def finetune(model_spec: str, data: str | os.PathLike[str], images: str | os.PathLike[str],
             out: str | os.PathLike[str], config: FinetuneConfig = FinetuneConfig(), *,
             val_data: str | os.PathLike[str] | None = None,
             val_images: str | os.PathLike[str] | None = None,
             device: torch.device | str = "cpu", progress: bool = True,
             say: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune the model `model_spec` (a name or any checkpoint `load_sam` reads) on the COCO
    annotations `data` (images under `images`) into the run folder `out`; see the module
    docstring. Validation: `val_data` (images under `val_images`, default `images`), else a
    seeded `val_fraction` of the training images. Every input is checked before training."""
    from tqdm import tqdm

    from .models import load_any

    config.check()
    device = torch.device(device)
    train_set = CocoDataset(data, images)
    if val_data is not None:
        val_set = CocoDataset(val_data, val_images if val_images is not None else images)
        train_items, val_items = train_set.items, val_set.items
    else:
        val_set = train_set
        tr, va = split_indices(len(train_set), config.val_fraction, config.seed)
        if not va:
            raise ValueError(f"{len(train_set)} annotated images leave none for validation at "
                             f"--val-fraction {config.val_fraction}; give --val-data")
        train_items = [train_set.items[i] for i in tr]
        val_items = [train_set.items[i] for i in va]
    run = Path(out).expanduser()
    if (run / "log.jsonl").exists():
        raise FileExistsError(f"{run} already holds a fine-tuning run; choose another --out")
    loaded = load_any(model_spec)
    model, sam_config = loaded.model.to(device), loaded.config
    prompts = parse_prompts(config.val_prompts)

    for p in model.parameters():
        p.requires_grad_(False)
    learn = [model.mask_decoder] + ([model.image_encoder] if config.train_encoder else [])
    params = [p for m in learn for n, p in m.named_parameters()
              if not n.startswith(("head.", "norm_head."))]  # TinyViT's unused classifier
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * len(train_items)
    warmup = round(0.05 * total)
    loss_fn = _ImageLoss(model, config)

    run.mkdir(parents=True, exist_ok=True)
    save_json(run / "config.json", {"model": loaded.source, "model_sha256": loaded.sha256,
                                    "data": str(train_set.json_path),
                                    "val_data": str(val_set.json_path),
                                    "train_images": len(train_items), "val_images": len(val_items),
                                    "hyper": asdict(config)}, indent=2)
    records: list[dict[str, Any]] = []

    def log(record: dict[str, Any]) -> None:
        records.append(record)
        text = "".join(json.dumps(r) + "\n" for r in records).encode()
        atomic_write(run / "log.jsonl", lambda f: f.write(text))

    history = [_validate(model, val_set, val_items, prompts, config.seed)]
    log({"epoch": 0, "step": 0, "val_gt_miou": history[-1]})
    say(f"before fine-tuning: validation GT mIoU {_fmt(history[-1])}")
    step = 0
    model_path = run / "model.pt"
    t0 = time.perf_counter()
    for epoch in range(config.epochs):
        model.eval()
        model.mask_decoder.train()
        order = np.random.default_rng([config.seed, epoch]).permutation(len(train_items))
        bar = tqdm(order, desc=f"epoch {epoch + 1}/{config.epochs}", unit="img",
                   disable=not progress)
        for i in bar:
            item = train_items[int(i)]
            rgb, _ = read_image(item.path)
            objects = train_set.objects(item, rgb.shape[:2])
            rng = np.random.default_rng([config.seed, epoch, int(i)])
            if len(objects) > config.objects_per_image:
                pick = rng.choice(len(objects), config.objects_per_image, replace=False)
                objects = [objects[j] for j in np.sort(pick)]
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            lr = lr_at(step, config.lr, warmup, total, config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(rgb, objects, gen, device)
            loss.backward()
            optimizer.step()
            step += 1
            log({"epoch": epoch + 1, "step": step, "lr": lr, "loss": float(loss.detach()),
                 "elapsed_s": round(time.perf_counter() - t0, 3)})
            bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
        bar.close()
        history.append(_validate(model, val_set, val_items, prompts, config.seed))
        log({"epoch": epoch + 1, "step": step, "val_gt_miou": history[-1]})
        say(f"epoch {epoch + 1}: validation GT mIoU {_fmt(history[-1])}")
        save_model(model_path, model.cpu(), sam_config)
        model.to(device)
    save_json(run / "metrics.json", {"val_gt_miou": history, "steps": step,
                                     "model": model_path.name}, indent=2)
    return FinetuneResult(model_path, step, history)


def _fmt(miou: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {'-' if v is None else f'{v:.4f}'}" for k, v in miou.items())
