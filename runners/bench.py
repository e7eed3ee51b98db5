"""lra-bench: speed and peak memory of one model across sequence lengths, in training and inference.

    lra-bench model=linformer task=text hardware=cpu bench.seq_lens=[1024,2048,3072,4096]   (-m to sweep)

At each length the task's model (two towers for retrieval) is built for that length and fed random
tokens of the task's vocabulary, padded as the task's training batches are (bench.padding). `train`
times one training step (forward, backward, optimizer, as lra-train runs it), `infer` one forward pass
without gradients. What each measurement holds:
lra.engine.benchmark. Each writes one record (records.jsonl is rewritten after every one, so a crash
loses nothing measured); after an out-of-memory length, the longer lengths of that mode are
recorded as `skipped`.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from tqdm import tqdm

from lra.cli import records_kept, reported, resumable, run
from lra.config import CONF_DIR, BenchMode, Precision
from lra.engine.benchmark import Outcome, check_bench_config, measure_point, with_flops
from lra.engine.device import DTYPES, configured_device, environment, setup_device
from lra.jobs import run_job
from lra.measure import matmul_tflops
from lra.records import make_record, write_records

PROG = "lra-bench"
log = logging.getLogger("lra.bench")


def points(cfg: DictConfig) -> list[tuple[int, BenchMode]]:
    """The (length, mode) pairs a bench job measures, in order: shorter lengths first."""
    return [(length, BenchMode(mode)) for length in sorted(set(cfg.bench.seq_lens)) for mode in cfg.bench.modes]


def bench(cfg: DictConfig, run_dir: Path, previous: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Measure every (length, mode); write and return the records.

    `previous` records of this config (an interrupted job's) are kept, unless failed, and their
    points are not measured again."""
    check_bench_config(cfg)
    device = setup_device(cfg.hardware)
    env = environment(device)
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
        else:
            if mode in out_of_memory_at:
                outcome = Outcome("skipped", {"mode": mode.value},
                                  f"skipped: out of memory at {out_of_memory_at[mode]} tokens")
            else:
                outcome = with_flops(measure_point(cfg, length, mode, device), cfg, length, mode, matmul)
            log.info("%d tokens, %s: %s %s", length, mode.value, outcome.status, outcome.error or "")
            records.append(make_record(
                cfg, kind="bench", status=outcome.status, error=outcome.error, metrics=outcome.metrics,
                seq_len=length, batch_size=cfg.bench.batch_size, env=env, wall_s=time.perf_counter() - started,
            ))
        if records[-1]["status"] == "oom":
            out_of_memory_at[mode] = length
        write_records(run_dir, records)  # the file always holds every record up to here
    return records


def failed_records(cfg: DictConfig, status: str, error: str) -> list[dict[str, Any]]:
    """The records of a job that raised: one per point, each with the job's error."""
    env = environment(configured_device(cfg.hardware))
    return [
        make_record(cfg, kind="bench", status=status, error=error, metrics={"mode": mode.value}, seq_len=length,
                    batch_size=cfg.bench.batch_size, env=env, wall_s=0.0)
        for length, mode in points(cfg)
    ]


@hydra.main(config_path=str(CONF_DIR), config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """One job: skipped when its run directory holds this config's finished records, resumed at
    the first point it has no record of; in a sweep, a job that raises writes `failed` records."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode is RunMode.MULTIRUN
    with reported(PROG), resumable(lambda: records_kept(run_dir)):
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
