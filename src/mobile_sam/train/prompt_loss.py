"""Prompt-in-the-loop mask loss (beyond the MobileSAM paper; EdgeSAM describes the idea).

For each image and each of K prompts:
1. a seed point, uniform over the image area inside the padded input, goes through the
   teacher's decoder on the teacher's embedding; its best mask (highest predicted IoU of the
   three) is the teacher's object mask;
2. from that mask we sample the prompt: with probability 1/2 its bounding box, else a
   foreground point uniform over its pixels (the seed point when the mask is empty);
3. the teacher's decoder on the teacher's embedding gives the target logits, and the
   student's decoder on the student's embedding the prediction (single-mask output);
4. loss = binary cross-entropy + dice between the prediction and the target's binary mask,
   over the low-res pixels inside the image (the padding is ignored).

The teacher's prompt encoder and mask decoder are a frozen copy (from the cache), so the
decoder fine-tune stage can train the student's own copy against them. Random draws come
from the generator passed in, which the trainer seeds from (seed, step, rank).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .models import load_prompt_decoder


class PromptLoss:
    def __init__(self, model: nn.Module, teacher_state: Mapping[str, torch.Tensor],
                 prompts_per_image: int) -> None:
        teacher = nn.Module()
        teacher.prompt_encoder = copy.deepcopy(model.prompt_encoder)
        teacher.mask_decoder = copy.deepcopy(model.mask_decoder)
        load_prompt_decoder(teacher, teacher_state, source="teacher prompt encoder / decoder")
        self.prompt_encoder = teacher.prompt_encoder.eval().requires_grad_(False)
        self.teacher_decoder = teacher.mask_decoder.eval().requires_grad_(False)
        self.student_decoder = model.mask_decoder  # frozen in the encoder stage
        self.image_size = int(model.image_encoder.img_size)
        self.k = prompts_per_image

    def _decode(self, decoder: nn.Module, emb: torch.Tensor, points: torch.Tensor | None,
                boxes: torch.Tensor | None, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = None if points is None else (points, torch.ones(points.shape[:2], dtype=torch.int,
                                                                  device=points.device))
        sparse, dense = self.prompt_encoder(prompts, boxes, None)
        return decoder(image_embeddings=emb, image_pe=self.prompt_encoder.get_dense_pe(),
                       sparse_prompt_embeddings=sparse.to(emb.dtype),
                       dense_prompt_embeddings=dense.to(emb.dtype), multimask_output=multimask)

    def __call__(self, student_emb: torch.Tensor, teacher_emb: torch.Tensor,
                 input_hw: torch.Tensor, gen: torch.Generator,
                 decoder: nn.Module | None = None) -> torch.Tensor:
        """student_emb, teacher_emb: B, C, h, w; input_hw: B, 2 (h', w') of each image in the
        padded input frame. Returns the mean loss over the B·K prompts (a scalar)."""
        decoder = decoder if decoder is not None else self.student_decoder
        device = student_emb.device
        losses = []
        for b in range(student_emb.shape[0]):
            h, w = (int(v) for v in input_hw[b])
            t_emb = teacher_emb[b:b + 1].to(student_emb.dtype)
            seeds = torch.rand(self.k, 1, 2, generator=gen) * torch.tensor([w, h])
            with torch.no_grad():
                low, iou = self._decode(self.teacher_decoder, t_emb, seeds.to(device), None, True)
            side = low.shape[-1]
            scale = self.image_size / side  # input-frame pixels per low-res pixel
            valid = torch.zeros(side, side, dtype=torch.bool, device=device)
            valid[: max(1, round(h / scale)), : max(1, round(w / scale))] = True
            best = low[torch.arange(self.k), iou.argmax(dim=1)] > 0  # K, side, side
            points, boxes = [], []
            for k in range(self.k):
                ys, xs = torch.nonzero(best[k] & valid, as_tuple=True)
                use_box = bool(torch.rand((), generator=gen) < 0.5)
                if len(ys) == 0:
                    points.append(seeds[k, 0])
                elif use_box:
                    boxes.append(torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                                 .float().cpu() * scale)
                else:
                    j = int(torch.randint(len(ys), (1,), generator=gen))
                    points.append((torch.stack([xs[j], ys[j]]).float().cpu() + 0.5) * scale)
            preds, targets = [], []
            for pts, bxs in ((points, None), (None, boxes)):
                if not (pts or bxs):
                    continue
                p = torch.stack(pts)[:, None].to(device) if pts else None
                q = torch.stack(bxs).to(device) if bxs else None
                with torch.no_grad():
                    target, _ = self._decode(self.teacher_decoder, t_emb, p, q, False)
                pred, _ = self._decode(decoder, student_emb[b:b + 1], p, q, False)
                preds.append(pred[:, 0])
                targets.append(target[:, 0])
            pred, target = torch.cat(preds).float(), (torch.cat(targets) > 0).float()
            losses.append(_bce_dice(pred, target, valid.float()))
        return torch.stack(losses).mean()


def _bce_dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Masked BCE-with-logits + soft dice: logits, target N, H, W; weight H, W (0 = ignore)."""
    w = weight.expand_as(logits)
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * w).sum()
    bce = bce / w.sum().clamp_min(1)
    prob = torch.sigmoid(logits) * w
    inter = (prob * target).sum(dim=(1, 2))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2)) + (target * w).sum(dim=(1, 2)) + 1)
    return bce + dice.mean()
