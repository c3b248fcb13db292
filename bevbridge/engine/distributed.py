"""Process groups for torchrun, and the few collectives the engine needs.

Launch N processes with ``torchrun --nproc_per_node N -m bevbridge.cli train CONFIG``: torchrun sets RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, and :func:`setup` joins the group (gloo on CPU, nccl on CUDA).
Without those variables everything runs in one process and every collective here is a no-op.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "setup", "cleanup", "info", "barrier", "all_gather_objects", "broadcast_object", "any_true",
           "select_device"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(kind: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto``: this process's CUDA device (LOCAL_RANK) if CUDA is available, else the CPU."""
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but CUDA is not available on this machine; use 'auto' or 'cpu'")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def setup(device: torch.device) -> DistInfo:
    """Join the torchrun process group if the environment names one (idempotent); return this process's place."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), world, backend)
    return info()


def cleanup() -> None:
    """Leave the process group (at the end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), dist.get_world_size())
    return DistInfo()


def barrier() -> None:
    if info().distributed:
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable; move tensors to the CPU first), in rank order, on every rank."""
    d = info()
    if not d.distributed:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not info().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is True on any rank (so all ranks take the same branch)."""
    if not info().distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
