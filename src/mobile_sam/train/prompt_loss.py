"""Prompt-in-the-loop distillation loss (beyond the MobileSAM paper; EdgeSAM describes it).

For each image and each of K prompts:
1. a seed point, uniform over the image area inside the padded input, goes through the
   teacher's decoder on the teacher's embedding; its best mask (highest predicted IoU of the
   three) is the teacher's object mask;
2. from that mask we sample the prompt: with probability 1/2 its bounding box, else a
   foreground point uniform over its cells (the seed point when the mask is empty);
3. the teacher's decoder on the teacher's embedding gives the target logits and IoU
   predictions, the student's decoder on the student's embedding the prediction (single-mask
   output);
4. loss = distance between the student's and the teacher's low-res logits over the cells
   inside the image (`kind`: "kl", the per-pixel Bernoulli KL of the teacher's probabilities
   from the student's; or "mse" on the logits) + `iou_weight` × MSE between the two IoU
   predictions. Both terms are 0 exactly when the student's outputs equal the teacher's, so
   the loss pulls the student towards the teacher and nowhere else.
5. with `refine` > 0 (EdgeSAM's recipe), `refine` more rounds: each prompt gets one more
   point, sampled where the student's and the teacher's binary masks disagree (positive
   where the teacher's mask is on, negative where it is off; a padding point when they
   agree), and step 3-4 repeat with the longer prompt. The loss is the mean over all rounds.

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

from .losses import MASK_DISTILL_LOSSES
from .models import load_prompt_decoder
from .prompting import (
    Prompts,
    cell_centre,
    decode,
    error_points,
    random_cell,
    region_box,
    valid_cells,
)


class PromptLoss:
    def __init__(self, model: nn.Module, teacher_state: Mapping[str, torch.Tensor],
                 prompts_per_image: int, kind: str = "kl", iou_weight: float = 1.0,
                 refine: int = 0) -> None:
        if kind not in MASK_DISTILL_LOSSES:
            raise ValueError(f"prompt loss must be one of {sorted(MASK_DISTILL_LOSSES)}, "
                             f"got {kind!r}")
        teacher = nn.Module()
        teacher.prompt_encoder = copy.deepcopy(model.prompt_encoder)
        teacher.mask_decoder = copy.deepcopy(model.mask_decoder)
        load_prompt_decoder(teacher, teacher_state, source="teacher prompt encoder / decoder")
        self.prompt_encoder = teacher.prompt_encoder.eval().requires_grad_(False)
        self.teacher_decoder = teacher.mask_decoder.eval().requires_grad_(False)
        self.student_decoder = model.mask_decoder  # frozen in the encoder stage
        self.image_size = int(model.image_encoder.img_size)
        self.k = prompts_per_image
        self.distance = MASK_DISTILL_LOSSES[kind]
        self.iou_weight = iou_weight
        self.refine = refine

    def _first_prompts(self, t_emb: torch.Tensor, hw: tuple[int, int],
                       gen: torch.Generator) -> tuple[list[Prompts], torch.Tensor, float]:
        """Steps 1-2: the point prompts and the box prompts (each group batched), the valid
        cells and the cell size."""
        h, w = hw
        seeds = torch.rand(self.k, 1, 2, generator=gen) * torch.tensor([w, h])
        ones = torch.ones(self.k, 1, dtype=torch.int64)
        with torch.no_grad():
            low, iou = decode(self.prompt_encoder, self.teacher_decoder, t_emb,
                              Prompts(seeds, ones), True)
        side = low.shape[-1]
        scale = self.image_size / side
        valid = valid_cells(side, hw, scale, t_emb.device)
        best = low[torch.arange(self.k), iou.argmax(dim=1)] > 0  # K, side, side
        points, boxes = [], []
        for k in range(self.k):
            region = best[k] & valid
            use_box = bool(torch.rand((), generator=gen) < 0.5)
            if use_box and bool(region.any()):
                boxes.append(region_box(region, scale))
            else:
                cell = random_cell(region, gen)
                points.append(seeds[k, 0] if cell is None else cell_centre(cell, scale))
        groups = []
        if points:
            groups.append(Prompts(torch.stack(points)[:, None],
                                  torch.ones(len(points), 1, dtype=torch.int64)))
        if boxes:
            groups.append(Prompts(boxes=torch.stack(boxes)))
        return groups, valid, scale

    def __call__(self, student_emb: torch.Tensor, teacher_emb: torch.Tensor,
                 input_hw: torch.Tensor, gen: torch.Generator,
                 decoder: nn.Module | None = None) -> torch.Tensor:
        """student_emb, teacher_emb: B, C, h, w; input_hw: B, 2 (h', w') of each image in the
        padded input frame. Returns the mean loss over images, prompts and rounds (a scalar)."""
        decoder = decoder if decoder is not None else self.student_decoder
        terms = []
        for b in range(student_emb.shape[0]):
            hw = (int(input_hw[b, 0]), int(input_hw[b, 1]))
            t_emb = teacher_emb[b:b + 1].to(student_emb.dtype)
            s_emb = student_emb[b:b + 1]
            groups, valid, scale = self._first_prompts(t_emb, hw, gen)
            for prompts in groups:
                for r in range(self.refine + 1):
                    with torch.no_grad():
                        target, t_iou = decode(self.prompt_encoder, self.teacher_decoder, t_emb,
                                               prompts, False)
                    pred, s_iou = decode(self.prompt_encoder, decoder, s_emb, prompts, False)
                    pred, target = pred[:, 0].float(), target[:, 0].float()
                    term = self.distance(pred, target, valid.float())
                    if self.iou_weight:
                        term = term + self.iou_weight * F.mse_loss(s_iou.float(), t_iou.float())
                    terms.append(term)
                    if r < self.refine:
                        coords, labels = error_points(pred.detach() > 0, target > 0, valid,
                                                      gen, scale)
                        prompts = prompts.with_points(coords, labels)
        return torch.stack(terms).mean()
