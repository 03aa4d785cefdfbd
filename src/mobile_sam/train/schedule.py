"""Learning-rate schedule and the per-rank sample order: pure functions of the step.

Both are recomputed from the step number rather than stored, so a resumed run sees exactly
the learning rates and batches an uninterrupted one would.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import DistributedSampler


def lr_at(step: int, base_lr: float, warmup: int, total: int, min_ratio: float) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up over `warmup` steps
    from base/warmup to base, then cosine decay to base·min_ratio at the last step."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(total - warmup - 1, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def rank_order(n: int, epoch: int, seed: int, rank: int, world_size: int,
               per_step: int, steps: int) -> list[int]:
    """Positions in range(n) this rank loads in `epoch`, `per_step` (= batch × accumulate)
    per optimizer step, `steps` steps. DistributedSampler (shuffled by seed + epoch) deals
    the permutation round-robin over ranks; the remainder that does not fill a global batch
    is dropped, so every step sees exactly batch × accumulate × world_size samples."""
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return list(sampler)[: per_step * steps]


def micro_batches(batch_len: int, accumulate: int) -> list[slice]:
    """Split a loaded batch of batch × accumulate samples into `accumulate` strided micro-batches.

    Striding (micro-batch a takes items a, a + A, a + 2A, ...) makes one process with
    accumulate = A·W see exactly the micro-batches that W processes with accumulate = A see,
    so BatchNorm statistics, and therefore the weights, agree between the two set-ups.
    """
    return [slice(a, batch_len, accumulate) for a in range(accumulate)]


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed for the random draws of one optimizer step on one rank (prompt sampling, drop
    path): a function of (seed, step, rank) only, so resuming needs no RNG state."""
    g = torch.Generator().manual_seed(seed)
    offset = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
    return (offset + 1_000_003 * step + 7_919 * rank) % (2**63 - 1)
