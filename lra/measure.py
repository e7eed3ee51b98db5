"""Time and peak memory of one measurement alone, on CUDA and on the CPU.

Time (`median_seconds`): torch.utils.benchmark's Timer, the median of repeated blocks of calls after
its warm-up, the device synchronised at each reading of the clock, on the thread count torch is set to.

Peak memory (`peak_memory`), the same figure on both devices: the highest count, during the
measured block, of the bytes allocated inside it and still alive (activations, gradients,
temporaries, and optimizer state only if the block creates it, as a first step does), above a
baseline of everything that existed before it (the weights, existing optimizer state, the input
batch), which is never counted. A training step releases its gradients at its end (sets them to
None), so a measured step starts with none, and both devices count the gradients it makes.
- CUDA: `max_memory_allocated` after a reset, minus `memory_allocated` at entry. That is the
  figure as long as nothing that existed before is freed inside the block: freeing it can lower
  the CUDA figure by as much (its memory is reused), not the CPU's. The CUDA figure also holds the
  allocator's rounding (to multiples of 512 bytes) and the workspaces that kernels allocate.
- CPU: the allocator keeps no statistics (and tracemalloc does not see torch's allocations), so a
  dispatch mode (`LiveTensorBytes`) counts the storages that operations allocate, exactly, between
  operations: what one operation allocates and frees within itself is not seen. Optionally it
  enforces a cap, so that a CPU measurement can run out of memory as a GPU does.
The whole-process figure is another one: the peak resident set of a process (`peak_rss_bytes`),
meaningful for a process that measured one thing.

FLOPs (`count_step_flops`): torch's FLOP counter (matrix products), without computing where the model
allows it: on the meta device, else on fake tensors (shapes without data), else for real on the CPU.

Attention kernels (`SdpaCalls`): which of scaled_dot_product_attention's kernels ran each call, as torch
dispatched it, not as a rule predicts it.
"""

from __future__ import annotations

import resource
import sys
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

from lra.errors import LRAError, one_line
from lra.memory import BY_DEVICE

# Operations that return their input as new memory: torch.tensor(...) (and as_tensor, new_tensor,
# an optimizer's step counter) builds its tensor outside any dispatch mode and hands it through
# lift_fresh. In torch 2.13 no other operation of tensor creation, the optimizers or a training
# step does so.
RETURNS_FRESH_INPUT = frozenset({torch.ops.aten.lift_fresh.default})


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of the tensor storages that operations inside the mode allocate while they
    are alive (`live`), and the highest count (`peak`); with `cap` (bytes), an operation that takes
    the count above it raises torch.OutOfMemoryError.

    A storage an operation returns is new unless it is one of the operation's inputs: a view, an
    in-place or an out= result of a tensor that existed before adds nothing, of one made inside
    nothing more. What an operation grows an input's storage by (resize_, an out= too small) is
    new, and a counted storage is recounted at its new size.
    """

    def __init__(self, cap: int | None = None) -> None:
        super().__init__()
        self.cap = cap
        self.live = 0
        self.peak = 0
        # counted storages by key: (bytes, bytes they held before the mode, a reference whose death
        # uncounts them); each counts the difference of the two sizes
        self._counted: dict[int, tuple[int, int, weakref.ref]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        earlier = _input_bytes(func, _leaves((*args, *kwargs.values())))
        out = func(*args, **kwargs)
        for storage in _storages(_leaves((out,))):
            self._count(storage, earlier.get(storage._cdata, 0))
        self.peak = max(self.peak, self.live)
        if self.cap is not None and self.live > self.cap:
            raise torch.OutOfMemoryError(
                f"{func}: {self.live / 2**20:.1f} MB of live tensors exceed the cap of {self.cap / 2**20:.1f} MB"
            )
        return out

    def _count(self, storage: torch.UntypedStorage, earlier: int) -> None:
        """Count what `storage` holds beyond `earlier`, the bytes it held before this operation that
        the mode did not count (an input's); recount a counted storage at its present size."""
        key, size = storage._cdata, storage.nbytes()
        if key in self._counted:
            held, before, ref = self._counted[key]
            if size != held:
                self._counted[key] = (size, before, ref)
                self.live += size - held
        elif size > earlier:
            self._counted[key] = (size, earlier, weakref.ref(storage, partial(self._free, key)))
            self.live += size - earlier

    def _free(self, key: int, _ref: weakref.ref) -> None:
        """Uncount a storage that was freed (the callback of its reference)."""
        size, before, _ = self._counted.pop(key)
        self.live -= size - before


def _leaves(tree: Iterable[Any]) -> Iterator[Any]:
    """The leaves of nested lists and tuples: an operation's arguments or results."""
    for item in tree:
        if isinstance(item, (list, tuple)):
            yield from _leaves(item)
        else:
            yield item


def _storages(leaves: Iterable[Any]) -> Iterator[torch.UntypedStorage]:
    """The storages of the tensors (not on the meta device) and the storages among `leaves`."""
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if not leaf.is_meta:
                yield leaf.untyped_storage()
        elif isinstance(leaf, torch.UntypedStorage):
            yield leaf


def _input_bytes(func: Any, inputs: Iterable[Any]) -> dict[int, int]:
    """The bytes of the storages that `func`'s inputs hold before it runs, by storage key: memory
    it did not allocate. The tensor lift_fresh is handed is new, unless it wraps memory torch did
    not allocate (torch.from_numpy, which cannot resize it)."""
    storages = _storages(inputs)
    if func in RETURNS_FRESH_INPUT:
        storages = (storage for storage in storages if not storage.resizable())
    return {storage._cdata: storage.nbytes() for storage in storages}


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
    """Measure the peak, during the `with` block, of the bytes allocated inside it and still alive
    (activations, gradients, temporaries, optimizer state the block creates), above everything that
    existed before it (weights, existing optimizer state, the input batch): the same figure on CUDA
    and on the CPU, as the module's docstring defines it. The result is filled in when the block ends.

    On the CPU, `cpu_cap` (bytes) makes the block run out of memory above it.
    """
    result = PeakMemory(measure=BY_DEVICE[device.type])
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
    return None if cap is None else int(cap * 2**20)


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


Inputs = tuple[Optional[torch.Tensor], ...]  # a step's inputs: tokens, mask (None: no padding), labels


@dataclass
class FlopCount:
    """Result of `count_step_flops`: the FLOPs and where they were counted (meta, fake or cpu)."""

    flops: int
    on: str


def _on_meta(model: torch.nn.Module, batch: Inputs, step: Callable[[torch.nn.Module, Inputs], object]) -> int:
    """Count on the meta device: nothing is computed or stored. A model that turns autocast off for its
    device cannot run there (the meta device has no autocast to turn off), nor one that reads a value."""
    meta = torch.device("meta")
    model = model.to(meta)
    return count_flops(lambda: step(model, tuple(None if t is None else t.to(meta) for t in batch)))


def _on_fake(model: torch.nn.Module, batch: Inputs, step: Callable[[torch.nn.Module, Inputs], object]) -> int:
    """Count on fake CPU tensors (shapes and devices without data): CPU autocast can be turned off; an
    operation whose output shape depends on values (nonzero, unique) cannot run. The model's own tensors
    are faked as they are used, and its gradients are left fake: the model is for counting only."""
    with FakeTensorMode(allow_non_fake_inputs=True) as fake:
        fake_batch = tuple(None if t is None else fake.from_tensor(t) for t in batch)
        return count_flops(lambda: step(model, fake_batch))


def _on_cpu(model: torch.nn.Module, batch: Inputs, step: Callable[[torch.nn.Module, Inputs], object]) -> int:
    """Count for real on the CPU, at the full shape: as long and as large as the step itself."""
    return count_flops(lambda: step(model, batch))


# Where count_step_flops counts, in the order it tries: each costs more than the one before.
FLOP_COUNTERS = {"meta": _on_meta, "fake": _on_fake, "cpu": _on_cpu}


def count_step_flops(build: Callable[[], tuple[torch.nn.Module, Inputs]],
                     step: Callable[[torch.nn.Module, Inputs], object]) -> FlopCount:
    """FLOPs of the matrix products of `step(model, batch)`, for the model and batch that `build()` makes
    on the CPU, fused attention counted as its plain form: on the meta device where the model runs there,
    else on fake tensors, else for real on the CPU (FLOP_COUNTERS). The counter counts shapes, not values,
    so each gives the same count for the same products. A fresh model and batch for each try."""
    failures = []
    for on, count in FLOP_COUNTERS.items():
        model, batch = build()
        try:
            return FlopCount(count(model, batch, step), on)
        except (RuntimeError, NotImplementedError) as error:
            failures.append(f"{on}: {type(error).__name__}: {one_line(str(error), 120)}")
    raise LRAError("no FLOP count: " + "; ".join(failures))


# The fused kernels of scaled_dot_product_attention, as records name them. A call that reaches none of
# them ran the math form: it is decomposed into plain operations before a dispatch mode sees it.
SDPA_KERNELS = {
    torch.ops.aten._scaled_dot_product_flash_attention.default: "flash",
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default: "flash",
    torch.ops.aten._scaled_dot_product_efficient_attention.default: "efficient",
    torch.ops.aten._scaled_dot_product_cudnn_attention.default: "cudnn",
    torch.ops.aten._scaled_dot_product_fused_attention_overrideable.default: "overrideable",
}
# How torch pads an input to a fused kernel's alignment (at::pad of a constant): on CUDA, the head
# dimension to a multiple of 8 (flash, memory-efficient) and the mask's key dimension to a multiple of 16
# (memory-efficient).
PAD = torch.ops.aten.constant_pad_nd.default


@dataclass(frozen=True)
class SdpaCall:
    """One call of scaled_dot_product_attention: the kernel that ran it, the keys' length, whether it had
    an explicit mask, and whether torch padded an input to the kernel's alignment."""

    backend: str
    seq_len: int
    masked: bool
    padded: bool


class _DispatchedOps(TorchDispatchMode):
    """The operations dispatched inside it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[Any] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


class SdpaCalls(TorchFunctionMode):
    """Records every call of F.scaled_dot_product_attention made inside it (`calls`), with the kernel
    torch dispatched it to: flash, efficient, cudnn, overrideable, or math. What ran, seen in the
    operations the call dispatched, rather than a prediction from the inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[SdpaCall] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        with _DispatchedOps() as dispatched:
            out = func(*args, **kwargs)
        kernels = [SDPA_KERNELS[op] for op in dispatched.ops if op in SDPA_KERNELS]
        key = kwargs["key"] if "key" in kwargs else args[1]
        mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
        self.calls.append(SdpaCall(kernels[0] if kernels else "math", key.shape[-2], mask is not None,
                                   PAD in dispatched.ops))
        return out


def median_seconds(fn: Callable[[], object], *, min_run_time: float = 2.0) -> float:
    """Median seconds per call of `fn`, timed by torch.utils.benchmark's Timer for at least
    `min_run_time`, on the thread count torch is set to (the profile's; Timer's own default is one).

    Timer warms up once, not before every block: it runs `fn` in blocks of 1, 10, 100... calls until
    reading the clock costs under 1e-4 of a block, then times blocks of that size. A call of over some
    ten milliseconds is so warmed up by one call and timed one by one; a call slower than `min_run_time`
    costs two calls, the second the whole timing.
    """
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def matmul_tflops(device: torch.device, dtype: torch.dtype, *, min_run_time: float = 0.5) -> float:
    """The achieved TFLOP/s of one square matrix product: what this device does at its best."""
    size = 8192 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ a, min_run_time=min_run_time)
    return 2 * size**3 / seconds / 1e12
