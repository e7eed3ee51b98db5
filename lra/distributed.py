"""Data-parallel training across processes started by torchrun (or any launcher that sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT).

One process per device. Every rank runs the same job; rank 0 alone writes (records, checkpoints,
TensorBoard) and decides what is to be done; the others learn it by broadcast. Without those
variables, or with one process, every function here is the single-process identity.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

T = TypeVar("T")
STARTED = "LRA_STARTED"  # environment: the Unix time every rank names its run directory after


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    """This process's device index on its machine (torchrun's LOCAL_RANK; 0 alone)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def start() -> None:
    """Join the process group when started as one of several processes, and agree with the
    others on the start time (so that `${lra.started:...}` names one run directory for all)."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        return
    # gloo for CPU tensors, nccl for CUDA ones: the hardware profile picks the device later
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    os.environ[STARTED] = str(on_main(time.time))


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def on_main(fn: Callable[[], T]) -> T:
    """`fn()` computed on rank 0 and given to every rank."""
    if not dist.is_initialized():
        return fn()
    box: list[Any] = [fn() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Each of `values` summed over the ranks."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def started(pattern: str) -> str:
    """The job's start time in strftime `pattern`: rank 0's under torchrun, else now."""
    when = float(os.environ[STARTED]) if STARTED in os.environ else time.time()
    return datetime.fromtimestamp(when).strftime(pattern)


OmegaConf.register_new_resolver("lra.started", started, use_cache=True, replace=True)
