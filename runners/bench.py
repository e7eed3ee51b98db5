"""lra-bench: speed and peak memory of one model across sequence lengths, in training and inference.

    lra-bench model=linformer task=text hardware=cpu bench.seq_lens=[1024,2048,3072,4096]   (-m to sweep)

At each length the task's model (two towers for retrieval) is built for that length and fed random
tokens of the task's vocabulary. `train` times one training step (forward, backward, optimizer, as
lra-train runs it), `infer` one forward pass without gradients. Each measurement writes one record
(records.jsonl is rewritten after every one, so a crash loses nothing measured):

- time: warm-up, then the median of repeated calls with the device synchronised (lra.measure);
- memory: the peak of the bytes one step allocates, above what existed before it, the same figure
  on CUDA and on the CPU (lra.measure), and the peak RSS of the worker process that made this one
  measurement (whole process);
- FLOPs of the step's matrix products (counted on the meta device, where the model allows it) and
  the achieved TFLOP/s, beside a plain matrix product's TFLOP/s measured in the same job;
- out of memory (CUDA, the CPU allocator, hardware.cpu_memory_cap_mb, or the system killing the
  worker) is a result: status `oom`; the longer lengths of that mode are recorded as `skipped`.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import hydra
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from tqdm import tqdm

from lra.cli import reported, run
from lra.config import CONF_DIR, BenchMode, Device, Precision
from lra.errors import LRAError, one_line
from lra.jobs import run_job
from lra.measure import (
    count_flops, free_memory, is_out_of_memory, matmul_tflops, median_seconds, memory_cap, peak_memory,
    peak_rss_bytes,
)
from lra.optim import build_optimizer, build_scheduler
from lra.records import make_record, write_records
from lra.worker import WorkerDied, WorkerError, run_isolated
from models.encoder import Classifier, check_model_config
from runners.train import DTYPES, Trainee, autocast, loss_scaler, micro_batch, setup_device, train_step
from tasks import task_config

PROG = "lra-bench"
log = logging.getLogger("lra.bench")


@dataclass
class Outcome:
    """What one measurement gave: a status, its metrics, and the one-line error when not ok."""

    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def check_bench_config(cfg: DictConfig) -> None:
    """Fail at once, with the key's name, on settings no measurement could satisfy."""
    bench = cfg.bench
    if not bench.seq_lens or min(bench.seq_lens) < 1:
        raise LRAError(f"bench.seq_lens: need one or more lengths of at least 1 token, got {list(bench.seq_lens)}")
    if not bench.modes:
        raise LRAError("bench.modes: need train, infer or both")
    if bench.batch_size < 1:
        raise LRAError(f"bench.batch_size: must be at least 1, got {bench.batch_size}")
    if bench.min_run_time <= 0:
        raise LRAError(f"bench.min_run_time: must be positive, got {bench.min_run_time}")
    memory_cap(cfg.hardware)  # a bad cap fails here, before any measurement
    micro_batch(cfg)  # and so does a bad trainer.accumulate (a train step splits its batch by it)
    if bench.find_max_batch and Device(cfg.hardware.device) is Device.cpu and cfg.hardware.cpu_memory_cap_mb is None:
        raise LRAError("bench.find_max_batch: on the CPU it needs hardware.cpu_memory_cap_mb, the memory to fill")
    for length in bench.seq_lens:
        check_model_config(cfg.model, length + 1)  # + 1: room for a CLS token


def inputs(cfg: DictConfig, length: int, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Random tokens of the task's vocabulary, no padding, random labels: one batch at `length`."""
    task = task_config(cfg.task)
    shape = (batch, length) if task.towers == 1 else (batch, task.towers, length)
    tokens = torch.randint(task.vocab_size, shape, device=device)
    return tokens, torch.ones(shape, dtype=torch.bool, device=device), torch.randint(task.num_classes, (batch,), device=device)


def build_model(cfg: DictConfig, length: int, device: torch.device) -> Classifier:
    task = task_config(cfg.task)
    return Classifier(cfg.model, task.vocab_size, task.num_classes, length, task.towers).to(device)


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


def step_flops(cfg: DictConfig, length: int, mode: BenchMode) -> int | None:
    """FLOPs of one step at bench.batch_size, counted on the meta device; None where the model's
    attention needs real values (data-dependent shapes or values) to run."""
    batch = cfg.bench.batch_size
    try:
        with torch.device("meta"):
            model = build_model(cfg, length, torch.device("meta"))
            tokens, _, labels = inputs(cfg, length, batch, torch.device("meta"))
        if mode is BenchMode.train:
            return count_flops(lambda: F.cross_entropy(model(tokens, None), labels).backward())
        with torch.no_grad():
            return count_flops(lambda: model(tokens, None))
    except (RuntimeError, NotImplementedError):
        return None


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
    batch = inputs(cfg, length, bench.batch_size, device)
    with peak_memory(device, cap) if cap else nullcontext():  # warm-up (compilation, optimizer state)
        step(batch)
    with peak_memory(device, cap) as memory:
        step(batch)
    seconds = median_seconds(lambda: step(batch), min_run_time=bench.min_run_time, warmup=False)
    towers = task_config(cfg.task).towers
    metrics: dict[str, Any] = {
        "mode": mode.value,
        "steps_per_s": 1 / seconds,
        "tokens_per_s": bench.batch_size * towers * length / seconds,
        "peak_memory_mb": memory.mb,
        "memory_measure": memory.measure,
    }
    if bench.find_max_batch:
        metrics["max_batch"] = largest_batch(
            lambda size: fits(step, inputs(cfg, length, size, device), device, cap), bench.batch_size, bench.max_batch
        )
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
        return run_isolated(measure_in_worker, cfg, length, mode, preload=["runners.bench", "torch._dynamo"])
    except WorkerDied as died:
        status = "oom" if died.killed else "failed"
        return Outcome(status, {"mode": mode.value}, str(died))
    except WorkerError as error:
        log.error("measurement at %d tokens (%s) failed:\n%s", length, mode.value, error.details)
        return Outcome("failed", {"mode": mode.value}, one_line(str(error)))
    except Exception as error:  # a measurement that breaks is a result; the sweep goes on
        log.exception("measurement at %d tokens (%s) failed", length, mode.value)
        return Outcome("failed", {"mode": mode.value}, one_line(f"{type(error).__name__}: {error}"))


def points(cfg: DictConfig) -> list[tuple[int, BenchMode]]:
    """The (length, mode) pairs a bench job measures, in order: shorter lengths first."""
    return [(length, BenchMode(mode)) for length in sorted(set(cfg.bench.seq_lens)) for mode in cfg.bench.modes]


def bench(cfg: DictConfig, run_dir: Path, previous: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Measure every (length, mode); write and return the records.

    `previous` records of this config (an interrupted job's) are kept, unless failed, and their
    points are not measured again."""
    check_bench_config(cfg)
    device = setup_device(cfg.hardware)
    matmul = matmul_tflops(device, DTYPES[Precision(cfg.hardware.precision)])
    kept = {(r["seq_len"], r["metrics"]["mode"]): r for r in previous if r["status"] != "failed"}
    out_of_memory_at: dict[BenchMode, int] = {}
    records: list[dict[str, Any]] = []
    bar = tqdm(points(cfg), desc=f"{cfg.model.name} on {cfg.task.name}", disable=None if cfg.bench.progress else True)
    for length, mode in bar:
        bar.set_postfix(seq_len=length, mode=mode.value)
        started = time.perf_counter()
        if (length, mode.value) in kept:
            records.append(kept[length, mode.value])
            if records[-1]["status"] == "oom":
                out_of_memory_at[mode] = length
            write_records(run_dir, records)  # the file always holds every record up to here
            continue
        if mode in out_of_memory_at:
            outcome = Outcome("skipped", {"mode": mode.value}, f"skipped: out of memory at {out_of_memory_at[mode]} tokens")
        else:
            outcome = measure_point(cfg, length, mode, device)
        if outcome.status == "oom":
            out_of_memory_at[mode] = length
        if outcome.status == "ok":
            flops = step_flops(cfg, length, mode)
            outcome.metrics["matmul_tflops"] = matmul
            if flops:
                outcome.metrics["flops_per_step"] = flops
                outcome.metrics["tflops"] = flops * outcome.metrics["steps_per_s"] / 1e12
        log.info("%d tokens, %s: %s %s", length, mode.value, outcome.status, outcome.error or "")
        records.append(make_record(
            cfg, kind="bench", status=outcome.status, error=outcome.error, metrics=outcome.metrics, seq_len=length,
            batch_size=cfg.bench.batch_size, device=device, wall_s=time.perf_counter() - started,
        ))
        write_records(run_dir, records)
    return records


def failed_records(cfg: DictConfig, status: str, error: str) -> list[dict[str, Any]]:
    """The records of a job that raised: one per point, each with the job's error."""
    device = torch.device(Device(cfg.hardware.device).value)
    return [
        make_record(cfg, kind="bench", status=status, error=error, metrics={"mode": mode.value}, seq_len=length,
                    batch_size=cfg.bench.batch_size, device=device, wall_s=0.0)
        for length, mode in points(cfg)
    ]


@hydra.main(config_path=str(CONF_DIR), config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """One job: skipped when its run directory holds this config's finished records, resumed at
    the first point it has no record of; in a sweep, a job that raises writes `failed` records."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode is RunMode.MULTIRUN
    with reported(PROG):
        records = run_job(
            cfg, run_dir, expected=len(points(cfg)), work=lambda previous: bench(cfg, run_dir, previous),
            failure=lambda status, error: failed_records(cfg, status, error), isolate=sweep,
        )
    if any(r["status"] == "failed" for r in records) and not sweep:
        sys.exit(1)


def cli() -> None:
    run(main, PROG)


if __name__ == "__main__":
    cli()
