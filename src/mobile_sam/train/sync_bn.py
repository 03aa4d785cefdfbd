"""BatchNorm over the global batch of all processes (`--sync-bn`).

Without it, each DDP process normalises by the statistics of its own images, so 8 processes ×
batch 1 is not one batch of 8, and only rank 0's running statistics are saved. With it:

- on CUDA (NCCL), torch's `nn.SyncBatchNorm`;
- on CPU (gloo, where `nn.SyncBatchNorm` does not run), `AllReduceBatchNorm2d`: each
  process sums x and x² per channel and counts its values, one autograd-aware all-reduce
  makes the global sums, and mean and (biased) variance come from them. The backward pass
  all-reduces the gradients of the sums, so the gradients are those of one big batch too.
  Running statistics are updated from the global mean and unbiased variance, as
  `nn.BatchNorm2d` would on the whole batch, and are therefore equal on every rank.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of each process's input is the sum of all gradients
    of the output (every process's loss depends on every process's input)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = grad.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training-mode statistics are those of all processes' batches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        c = x.shape[1]
        xf = x.double()  # E[x²] - E[x]² loses digits in fp32
        dims = [0, 2, 3]
        count = torch.full((1,), x.numel() / c, dtype=torch.float64, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                assert self.running_var is not None and self.num_batches_tracked is not None
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(
                    self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * n / (n - 1).clamp_min(1))
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d of `module` (in place; the parameters and buffers are kept,
    so an optimizer built on them still holds them) by the synchronised kind for `device`."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = AllReduceBatchNorm2d(child.num_features, child.eps, child.momentum,
                                       child.affine, child.track_running_stats)
            new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert(child, device)
    return module
