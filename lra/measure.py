"""Time and peak memory of one measurement alone, on CUDA and on the CPU.

Time: after a warm-up call, the median of repeated blocks of calls, the device synchronised around
each block, on the thread count torch is set to.

CUDA: the allocator's peak after a reset, minus what was allocated before (the baseline).
CPU: the allocator keeps no statistics, so a dispatch mode counts the bytes of every tensor
storage created inside the measured region while it is alive: exact, and the figure that scales
with attention. (tracemalloc does not see torch's allocations.) Optionally it enforces a cap, so
that a CPU measurement can run out of memory as a GPU does. The whole-process figure is the peak
resident set of a process (`peak_rss_bytes`), meaningful for a process that measured one thing.

FLOPs: torch's FLOP counter (matrix products), on the meta device so that nothing is computed.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from lra.errors import LRAError

BLOCK_SECONDS = 0.05  # the shortest timed block of calls
# What a record's peak_memory_mb counts, by device type.
MEMORY_MEASURES = {"cuda": "cuda_max_allocated_minus_baseline", "cpu": "live_tensor_bytes"}


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of tensor storages created inside the mode while they are alive; with
    `cap` (bytes), an operation that takes the count above it raises torch.OutOfMemoryError."""

    def __init__(self, cap: int | None = None) -> None:
        super().__init__()
        self.cap = cap
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                self._track(tensor.untyped_storage())
        if self.cap is not None and self.live > self.cap:
            raise torch.OutOfMemoryError(
                f"{func}: {self.live / 2**20:.1f} MB of live tensors exceed the cap of {self.cap / 2**20:.1f} MB"
            )
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
def peak_memory(device: torch.device, cpu_cap: int | None = None) -> Iterator[PeakMemory]:
    """Measure the peak memory allocated inside the `with` block, above what was allocated before.

    On the CPU, `cpu_cap` (bytes) makes the block run out of memory above it.
    """
    result = PeakMemory(measure=MEMORY_MEASURES[device.type])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result.bytes = torch.cuda.max_memory_allocated(device) - baseline
    else:
        with LiveTensorBytes(cpu_cap) as tracker:
            yield result
        result.bytes = tracker.peak


def memory_cap(hardware: Any) -> int | None:
    """The profile's CPU memory cap (hardware.cpu_memory_cap_mb) in bytes, or None."""
    cap = hardware.cpu_memory_cap_mb
    if cap is None:
        return None
    if cap <= 0:
        raise LRAError(f"hardware.cpu_memory_cap_mb: must be positive, got {cap}")
    return int(cap * 2**20)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` means the device ran out of memory (CUDA, the CPU allocator, or a cap)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def free_memory(device: torch.device) -> None:
    """Return cached blocks to the device after an out-of-memory error."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_rss_bytes() -> int:
    """The peak resident set size of this process so far (the whole-process figure)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix products `fn` runs, fused attention counted as its plain form."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def median_seconds(fn: Callable[[], object], *, min_run_time: float = 2.0, warmup: bool = True) -> float:
    """Median seconds per call of `fn`, timed for at least `min_run_time` (after one warm-up call).

    Calls are timed in blocks of at least BLOCK_SECONDS, so that the clock's cost is negligible; a
    call slower than that is its own block, and one such call may be the whole timing. (The timer
    of torch.utils.benchmark runs warm-up calls before every block: too dear for a step of seconds.)
    """
    if warmup:
        fn()
    first = _seconds_per_call(fn, 1)
    number = max(1, int(BLOCK_SECONDS / first))
    per_call = [first] if number == 1 else []
    while not per_call or len(per_call) * number * statistics.fmean(per_call) < min_run_time:
        per_call.append(_seconds_per_call(fn, number))
    return statistics.median(per_call)


def _seconds_per_call(fn: Callable[[], object], number: int) -> float:
    """Seconds per call of `number` calls of `fn`, the device synchronised before and after."""
    synchronize = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    synchronize()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    synchronize()
    return (time.perf_counter() - start) / number


def matmul_tflops(device: torch.device, dtype: torch.dtype, *, min_run_time: float = 0.5) -> float:
    """The achieved TFLOP/s of one square matrix product: what this device does at its best."""
    size = 8192 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ a, min_run_time=min_run_time)
    return 2 * size**3 / seconds / 1e12
