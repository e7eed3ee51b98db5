"""The device a run uses, how it is seeded, its precision, how batches reach it, and what a record
says of the machine."""

from __future__ import annotations

import functools
import platform
import random
import subprocess
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from lra import distributed
from lra.config import CONF_DIR, Device, MatmulPrecision, Precision
from lra.errors import LRAError

DTYPES = {Precision.fp32: torch.float32, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}


def setup_device(hardware: DictConfig) -> torch.device:
    """The profile's device (this process's GPU under torchrun), its thread count and fp32 matmul
    precision applied."""
    device = torch.device(Device(hardware.device).value)
    if device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LRAError(f"hardware.device: hardware={hardware.name} needs CUDA, which this torch build cannot see")
    if hardware.threads > 0:
        torch.set_num_threads(hardware.threads)
    # fp32 matmuls, those that attention keeps in fp32 under autocast too: TF32 tensor cores at `high`
    torch.set_float32_matmul_precision(MatmulPrecision(hardware.matmul_precision).value)
    return device


def configured_device(hardware: DictConfig) -> torch.device:
    """The profile's device type, without setting anything up: what a failed job's record names."""
    return torch.device(Device(hardware.device).value)


def pins_memory(device: torch.device) -> bool:
    """Whether batches for `device` are built in page-locked host memory: a CUDA device copies from
    it asynchronously, while the host goes on (to the next batch); a CPU run gains nothing."""
    return device.type == "cuda"


def to_device(batch: tuple[torch.Tensor | None, ...], device: torch.device) -> tuple[torch.Tensor | None, ...]:
    """A batch's tensors on `device` (a mask of None, no padding, stays None); copies to a CUDA
    device do not block the host, which reads nothing of them back before the step's results."""
    return tuple(None if t is None else t.to(device, non_blocking=pins_memory(device)) for t in batch)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loss_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """The gradient scaler of fp16 steps; a disabled one (scaling nothing) at other precisions."""
    return torch.amp.GradScaler(device.type, enabled=precision is Precision.fp16)


def autocast(device: torch.device, precision: Precision) -> torch.autocast:
    """Mixed precision as the profile says: parameters, optimizer state and the loss stay fp32."""
    return torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision is not Precision.fp32)


@functools.cache  # once per process: a bench job writes a record per measurement
def git_sha() -> str | None:
    """The checkout's commit, when lra-bench runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=CONF_DIR.parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device: torch.device) -> dict[str, Any]:
    """A record's `env`: the versions, the device and its threads, the fp32 matmul precision, the commit."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else None
    else:
        name = platform.processor() or platform.machine()
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "device_name": name,
        "threads": torch.get_num_threads(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "git_sha": git_sha(),
    }
