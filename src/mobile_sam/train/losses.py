"""Mask losses on low-res logits, each masked by a weight map (0 = padding, ignored).

- `logit_kl`: distillation. The Bernoulli KL divergence KL(teacher || student) per pixel,
  i.e. BCE against the teacher's sigmoid probabilities minus the teacher's entropy, so it is
  exactly 0 when the student's logits equal the teacher's and > 0 otherwise.
- `logit_mse`: distillation. MSE between the two logit maps (also 0 at equality).
- `bce_dice`: supervision by a (possibly soft) ground-truth mask: soft dice + weighted BCE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    w = weight.expand_as(values)
    return (values * w).sum() / w.sum().clamp_min(1)


def logit_kl(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel KL(sigmoid(teacher) || sigmoid(student)): logits N, H, W; weight H, W."""
    q = torch.sigmoid(teacher)
    kl = (q * (F.logsigmoid(teacher) - F.logsigmoid(student))
          + (1 - q) * (F.logsigmoid(-teacher) - F.logsigmoid(-student)))
    return _weighted_mean(kl, weight)


def logit_mse(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel squared difference of logits N, H, W; weight H, W."""
    return _weighted_mean((student - teacher) ** 2, weight)


MASK_DISTILL_LOSSES = {"kl": logit_kl, "mse": logit_mse}


def bce_dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
             bce_weight: float = 1.0) -> torch.Tensor:
    """Masked soft dice (one per mask, averaged) + `bce_weight` × BCE-with-logits: logits,
    target N, H, W (target in [0, 1]); weight H, W."""
    w = weight.expand_as(logits)
    prob = torch.sigmoid(logits) * w
    t = target * w
    inter = (prob * t).sum(dim=(1, 2))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2)) + t.sum(dim=(1, 2)) + 1)
    if not bce_weight:
        return dice.mean()
    bce = _weighted_mean(F.binary_cross_entropy_with_logits(logits, target, reduction="none"),
                         weight)
    return dice.mean() + bce_weight * bce
