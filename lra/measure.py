"""Time and peak memory of one measurement alone, on CUDA and on the CPU.

Time: torch.utils.benchmark after a warm-up call, the device synchronised around the timed
region, the median of repeated blocks, on the thread count torch is set to.

CUDA: the allocator's peak after a reset, minus what was allocated before (the baseline).
CPU: the allocator keeps no statistics, so a dispatch mode counts the bytes of every tensor
storage created inside the measured region while it is alive: exact, and the figure that scales
with attention. (tracemalloc does not see torch's allocations.)
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.utils import benchmark
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# What a record's peak_memory_mb counts, by device type.
MEMORY_MEASURES = {"cuda": "cuda_max_allocated_minus_baseline", "cpu": "live_tensor_bytes"}


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of tensor storages created inside the mode while they are alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                self._track(tensor.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata
        if key in self._seen:
            return
        self._seen.add(key)
        size = storage.nbytes()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._seen.discard(key)


@dataclass
class PeakMemory:
    """Result of `peak_memory`: bytes above the baseline, and how they were counted."""

    bytes: int = 0
    measure: str = ""

    @property
    def mb(self) -> float:
        return self.bytes / 2**20


@contextmanager
def peak_memory(device: torch.device) -> Iterator[PeakMemory]:
    """Measure the peak memory allocated inside the `with` block, above what was allocated before."""
    result = PeakMemory(measure=MEMORY_MEASURES[device.type])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result.bytes = torch.cuda.max_memory_allocated(device) - baseline
    else:
        with LiveTensorBytes() as tracker:
            yield result
        result.bytes = tracker.peak


def median_seconds(fn: Callable[[], object], *, min_run_time: float = 2.0) -> float:
    """Median seconds per call of `fn`, timed for at least `min_run_time` after one warm-up call."""
    fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median
