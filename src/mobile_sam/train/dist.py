"""torch.distributed in one place: started by torchrun (env vars), by srun, or a single process.

Under `torchrun --nproc_per_node=N` every process gets RANK / WORLD_SIZE / LOCAL_RANK; we
join the group with NCCL on GPUs and gloo on CPUs. Without those variables nothing is
initialised and the helpers degrade to no-ops, so the same code runs on one process.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

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


def first_host(nodelist: str) -> str:
    """The first host name of a SLURM node list: `node[03-05,9],gpu1` -> `node03`."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist
    if "[" not in head:
        return head.strip()
    prefix, rest = head.split("[", 1)
    first = rest.split("]")[0].split(",")[0].split("-")[0]
    return prefix + first


def slurm_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The torchrun-style variables for a process started by `srun` without torchrun (one
    task per GPU): RANK, WORLD_SIZE, LOCAL_RANK from SLURM_PROCID, SLURM_NTASKS,
    SLURM_LOCALID; MASTER_ADDR the first node of SLURM_JOB_NODELIST (unless set); MASTER_PORT
    29500 (unless set). Empty when torchrun's variables are already there or this is no
    multi-task SLURM step."""
    if "WORLD_SIZE" in environ or "SLURM_PROCID" not in environ:
        return {}
    ntasks = environ.get("SLURM_NTASKS") or environ.get("SLURM_NPROCS")
    if not ntasks or int(ntasks) < 2:
        return {}
    out = {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": ntasks,
           "LOCAL_RANK": environ.get("SLURM_LOCALID", "0")}
    if "MASTER_ADDR" not in environ:
        nodes = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
        if not nodes:
            raise RuntimeError("srun without torchrun: SLURM_JOB_NODELIST is not set, so the "
                               "rendezvous host is unknown; set MASTER_ADDR")
        out["MASTER_ADDR"] = first_host(nodes)
    if "MASTER_PORT" not in environ:
        out["MASTER_PORT"] = "29500"
    return out


def init(device: str = "auto", timeout_minutes: float | None = None) -> DistInfo:
    """Join the process group when started by torchrun (or by srun, see `slurm_env`); pick
    this process's device. `timeout_minutes`: the process group's timeout (collectives and
    barriers, e.g. while rank 0 loads the teacher); torch's default when None."""
    os.environ.update(slurm_env(os.environ))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        # Without --sync-bn (sync_bn.py) each process normalises its own batch.
        kwargs = {} if timeout_minutes is None else {"timeout": timedelta(minutes=timeout_minutes)}
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", **kwargs)
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
