"""torch.distributed in one place: started by torchrun (env vars) or a single process.

Under `torchrun --nproc_per_node=N` every process gets RANK / WORLD_SIZE / LOCAL_RANK; we
join the group with NCCL on GPUs and gloo on CPUs. Without those variables nothing is
initialised and the helpers degrade to no-ops, so the same code runs on one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` -> cuda:<local_rank> when CUDA is available, else cpu; anything else as given."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device {name!r} is not a torch device: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def init(device: str = "auto") -> DistInfo:
    """Join the process group when started by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        # nn.SyncBatchNorm is GPU-only, and not used here: each process normalises its own batch.
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (returns it unchanged on one process). The result is
    on the tensor's device; NCCL reduces a CUDA copy of a CPU tensor."""
    if dist.is_available() and dist.is_initialized():
        work = values.clone()
        if dist.get_backend() == "nccl" and work.device.type != "cuda":
            work = work.cuda()
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        values = work.to(values.device)
    return values


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank `src`'s Python object on every rank."""
    if dist.is_available() and dist.is_initialized():
        holder = [obj]
        dist.broadcast_object_list(holder, src=src)
        return holder[0]
    return obj
