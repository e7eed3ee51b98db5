"""One speed and memory measurement of a model at one length, in training or inference (lra-bench).

- time: warm-up, then the median of repeated calls with the device synchronised (lra.measure);
- memory: the peak of the bytes one step allocates, above what existed before it, the same figure
  on CUDA and on the CPU (lra.measure), and on the CPU the peak RSS of the worker process that made
  this one measurement (whole process);
- the batch: random tokens, padded as the task's batches are (bench.padding, `real_lengths`);
- FLOPs of the step's matrix products on that batch, counted without computing where the model allows it
  (lra.measure.count_step_flops);
- the kernels scaled_dot_product_attention ran, seen in one eager forward pass on that batch (`sdpa_fields`);
- running out of memory (CUDA, the CPU allocator, hardware.cpu_memory_cap_mb, or the system killing
  the worker) is a result: status `oom`.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from lra.config import BenchMode, BenchPadding, Device, Precision, check_ranges
from lra.engine.device import autocast, loss_scaler, setup_device
from lra.engine.inputs import build_model, inputs
from lra.engine.step import Trainee, check_accumulation, train_step
from lra.errors import LRAError, one_line
from lra.measure import (
    FlopCount, Inputs, SdpaCalls, count_step_flops, free_memory, is_out_of_memory, median_seconds, memory_cap,
    peak_memory, peak_rss_bytes,
)
from lra.optim import build_optimizer, build_scheduler
from lra.worker import WorkerDied, WorkerError, run_isolated
from models.encoder import Classifier, check_model_config
from tasks import task_config

log = logging.getLogger("lra.bench")
CPU = torch.device("cpu")


@dataclass
class Outcome:
    """What one measurement gave: a status, its metrics, and the one-line error when not ok."""

    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def check_bench_config(cfg: DictConfig) -> None:
    """Fail at once, naming the keys, on settings no measurement could satisfy: a value out of its
    range (lra.config), or keys that do not fit together. lra-bench runs it before Hydra creates the
    run directory (conf/hydra/callbacks/checked.yaml) and at the start of every job."""
    check_ranges(cfg)
    bench = cfg.bench
    if not bench.seq_lens:
        raise LRAError(f"bench.seq_lens: need one or more lengths of at least 1 token, got {list(bench.seq_lens)}")
    if not bench.modes:
        raise LRAError("bench.modes: need train, infer or both")
    if BenchMode.train in bench.modes:  # a train step splits the bench's batch into trainer.accumulate parts
        check_accumulation(cfg, "bench.batch_size", bench.batch_size)
    if bench.find_max_batch and Device(cfg.hardware.device) is Device.cpu and cfg.hardware.cpu_memory_cap_mb is None:
        raise LRAError("bench.find_max_batch: on the CPU it needs hardware.cpu_memory_cap_mb, the memory to fill")
    for length in bench.seq_lens:
        check_model_config(cfg.model, length + 1)  # + 1: room for a CLS token


def make_step(cfg: DictConfig, model: Classifier, mode: BenchMode, device: torch.device) -> Callable[[tuple], Any]:
    """One train step (as lra-train runs it) or one inference pass, on a batch of `inputs`."""
    forward = torch.compile(model) if cfg.hardware.compile else model
    if mode is BenchMode.train:
        optimizer = build_optimizer(model, cfg.optimizer)
        trainee = Trainee(model=model, forward=forward, optimizer=optimizer,
                          scheduler=build_scheduler(optimizer, cfg.optimizer, cfg.trainer.max_steps),
                          scaler=loss_scaler(device, Precision(cfg.hardware.precision)))
        return lambda batch: train_step(trainee, batch, cfg, device)
    model.eval()

    def infer(batch: tuple) -> torch.Tensor:
        with torch.no_grad(), autocast(device, Precision(cfg.hardware.precision)):
            return forward(batch[0], batch[1])

    return infer


def real_lengths(cfg: DictConfig, shape: tuple[int, ...], length: int) -> torch.Tensor | None:
    """The real tokens of each sequence of a bench batch of `shape` (batch, or batch and towers) at
    `length`, as the task's batches have them: under bench.padding=task, for a task whose sequences vary
    in length (TaskConfig.min_fill), drawn uniformly from min_fill * length to length, the longest then
    stretched to fill `length` (a batch is padded to its longest sequence). Drawn from the run's seed
    alone, so every measurement of a run sees the same pattern. None: every sequence fills `length`."""
    fill = task_config(cfg.task).min_fill
    if BenchPadding(cfg.bench.padding) is BenchPadding.none or fill is None:
        return None
    shortest = max(1, math.ceil(fill * length))
    real = torch.randint(shortest, length + 1, shape, generator=torch.Generator().manual_seed(cfg.seed))
    real.view(-1)[real.argmax()] = length
    return real


def bench_inputs(cfg: DictConfig, length: int, batch: int, device: torch.device) -> Inputs:
    """A batch of random tokens and labels (lra.engine.inputs) at `length`, padded by `real_lengths`:
    token 0 and mask False beyond each sequence's real tokens; the mask None when nothing is padded,
    as tasks.batching.pad_batch gives it."""
    tokens, _, labels = inputs(cfg, length, batch, device)
    real = real_lengths(cfg, tuple(tokens.shape[:-1]), length)
    if real is None or bool((real == length).all()):
        return tokens, None, labels
    mask = (torch.arange(length) < real[..., None]).to(device)
    return tokens.masked_fill(~mask, 0), mask, labels


def masked_fraction(batch: Inputs) -> float:
    """The share of a batch's token positions that are padding."""
    mask = batch[1]
    return 0.0 if mask is None else 1 - mask.sum().item() / mask.numel()


def forward_backward(model: Classifier, batch: Inputs) -> None:
    """The products of a train step: forward and backward (the optimizer multiplies no matrices)."""
    tokens, mask, labels = batch
    F.cross_entropy(model(tokens, mask), labels).backward()


def forward_only(model: Classifier, batch: Inputs) -> None:
    """The products of an inference step: a forward pass without gradients."""
    with torch.no_grad():
        model(batch[0], batch[1])


COUNTED_STEPS = {BenchMode.train: forward_backward, BenchMode.infer: forward_only}  # what each mode's FLOPs count


def step_flop_count(cfg: DictConfig, length: int, mode: BenchMode) -> FlopCount | None:
    """FLOPs of the matrix products of one step on the bench's batch (forward and backward, or the
    forward alone), with where they were counted; None, and a warning, if no way of counting ran."""
    def build() -> tuple[Classifier, Inputs]:
        return build_model(cfg, length, CPU), bench_inputs(cfg, length, cfg.bench.batch_size, CPU)

    try:
        return count_step_flops(build, COUNTED_STEPS[mode])
    except LRAError as error:
        log.warning("%s at %d tokens (%s): %s", cfg.model.name, length, mode.value, error)
        return None


# The record fields `sdpa_fields` fills; None where the model made no call of scaled_dot_product_attention.
SDPA_FIELDS = ("sdpa_backend", "sdpa_seq_len", "sdpa_mask", "sdpa_padded")


def sdpa_fields(cfg: DictConfig, model: Classifier, batch: Inputs, mode: BenchMode,
                device: torch.device) -> dict[str, Any]:
    """The calls of scaled_dot_product_attention in one eager forward pass of `mode` on `batch`, as torch
    dispatched them (lra.measure.SdpaCalls): the kernels that ran (flash, efficient, cudnn, math; several
    joined by commas), the longest key length passed, whether any call had an explicit mask, and whether
    torch padded an input to a kernel's alignment. The eager model's: under torch.compile the traced
    graph chooses its kernel by the same rules on the same shapes."""
    model.train(mode is BenchMode.train)
    with SdpaCalls() as sdpa, torch.set_grad_enabled(mode is BenchMode.train):
        with autocast(device, Precision(cfg.hardware.precision)):
            model(batch[0], batch[1])
    if not sdpa.calls:
        return dict.fromkeys(SDPA_FIELDS)
    return {
        "sdpa_backend": ",".join(dict.fromkeys(call.backend for call in sdpa.calls)),
        "sdpa_seq_len": max(call.seq_len for call in sdpa.calls),
        "sdpa_mask": any(call.masked for call in sdpa.calls),
        "sdpa_padded": any(call.padded for call in sdpa.calls),
    }


def largest_batch(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """The largest batch up to `limit` for which `fits` holds (it holds for every smaller batch):
    doubling from `start` while it fits, then bisecting. 0 when not even one example fits."""
    start = max(1, min(start, limit))
    low, high = (start, limit + 1) if fits(start) else (0, start)  # low fits (or is 0); high does not
    while low and 2 * low < high:
        if not fits(2 * low):
            high = 2 * low
            break
        low *= 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def out_of_memory(fn: Callable[[], Any], device: torch.device) -> str | None:
    """Run `fn`: None if it ran, its one-line error if it ran out of memory (other errors propagate).
    The memory is freed once the error, and the frames it holds, are gone."""
    try:
        fn()
        return None
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        message = one_line(str(error))
    free_memory(device)
    return message


def measure(cfg: DictConfig, length: int, mode: BenchMode) -> Outcome:
    """One measurement at `length` in `mode`, in this process; running out of memory is its result."""
    device = setup_device(cfg.hardware)
    metrics = {"mode": mode.value}
    error = out_of_memory(lambda: metrics.update(measured(cfg, length, mode, device)), device)
    return Outcome("ok", metrics) if error is None else Outcome("oom", {"mode": mode.value}, error)


def measured(cfg: DictConfig, length: int, mode: BenchMode, device: torch.device) -> dict[str, Any]:
    """The metrics of one measurement: warm-up, peak memory of one step, median time of the next ones."""
    bench = cfg.bench
    cap = memory_cap(cfg.hardware)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, length, device)
    step = make_step(cfg, model, mode, device)
    batch = bench_inputs(cfg, length, bench.batch_size, device)
    with peak_memory(device, cap) if cap else nullcontext():  # warm-up (compilation, optimizer state)
        step(batch)
    with peak_memory(device, cap) as memory:
        step(batch)
    seconds = median_seconds(lambda: step(batch), min_run_time=bench.min_run_time)
    towers = task_config(cfg.task).towers
    metrics: dict[str, Any] = {
        "mode": mode.value,
        "steps_per_s": 1 / seconds,
        "tokens_per_s": bench.batch_size * towers * length / seconds,
        "peak_memory_mb": memory.mb,
        "memory_measure": memory.measure,
        "masked_fraction": masked_fraction(batch),
        **sdpa_fields(cfg, model, batch, mode, device),
    }
    if bench.find_max_batch:
        def fits_batch(size: int) -> bool:
            return fits(step, bench_inputs(cfg, length, size, device), device, cap)

        metrics["max_batch"] = largest_batch(fits_batch, bench.batch_size, bench.max_batch)
    return metrics


def fits(step: Callable[[tuple], Any], batch: tuple, device: torch.device, cap: int | None) -> bool:
    """Whether one step on `batch` runs without running out of memory."""

    def capped_step() -> None:
        with peak_memory(device, cap):
            step(batch)

    return out_of_memory(capped_step, device) is None


def measure_in_worker(cfg: DictConfig, length: int, mode: BenchMode) -> Outcome:
    """`measure` in a fresh process (CPU): its peak RSS is this measurement's whole-process figure."""
    outcome = measure(cfg, length, mode)
    if outcome.status == "ok":
        outcome.metrics["peak_rss_mb"] = peak_rss_bytes() / 2**20
    return outcome


def measure_point(cfg: DictConfig, length: int, mode: BenchMode, device: torch.device) -> Outcome:
    """One measurement, isolated in a worker process on the CPU, in this process on CUDA (where the
    allocator's statistics already belong to the measurement alone); any failure becomes its status."""
    try:
        if device.type == "cuda":
            return measure(cfg, length, mode)
        # torch._dynamo: imported on first entering a dispatch mode (the memory tracker), seconds a worker
        return run_isolated(measure_in_worker, cfg, length, mode, preload=[__name__, "torch._dynamo"])
    except WorkerDied as died:
        status = "oom" if died.killed else "failed"
        return Outcome(status, {"mode": mode.value}, str(died))
    except WorkerError as error:
        log.error("measurement at %d tokens (%s) failed:\n%s", length, mode.value, error.details)
        return Outcome("failed", {"mode": mode.value}, one_line(str(error)))
    except Exception as error:  # a measurement that breaks is a result; the sweep goes on
        log.exception("measurement at %d tokens (%s) failed", length, mode.value)
        return Outcome("failed", {"mode": mode.value}, one_line(f"{type(error).__name__}: {error}"))


def with_flops(outcome: Outcome, cfg: DictConfig, length: int, mode: BenchMode, matmul: float) -> Outcome:
    """A successful `outcome` with the step's FLOPs and achieved TFLOP/s, beside a plain matrix
    product's `matmul` TFLOP/s on the same device."""
    if outcome.status == "ok":
        count = step_flop_count(cfg, length, mode)
        outcome.metrics["matmul_tflops"] = matmul
        if count:
            outcome.metrics["flops_per_step"] = count.flops
            outcome.metrics["flops_counted_on"] = count.on
            outcome.metrics["tflops"] = count.flops * outcome.metrics["steps_per_s"] / 1e12
    return outcome
