"""lra-compress: post-training compression of one finished lra-train run, measured beside the
float model it came from (what each model and figure is: lra.engine.compression).

    lra-compress run=results/runs/train/<run> [quantize=true] [sparsities=[0.5,0.8,0.9]]   (-m to sweep runs)

The records go to <run>/compress/records.jsonl (hydra.run.dir), where lra-report finds them beside
the run's own: one record (kind "compress") per model measured, in one job on the CPU, so that every
figure is compared on one device.
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

from lra.cli import USER_ERRORS, describe, records_kept, reported, resumable, run
from lra.config import CONF_DIR
from lra.engine.benchmark import Outcome
from lra.engine.compression import CPU, check_settings, compressed_layers, compressions, job_config, outcome
from lra.engine.device import environment, setup_device
from lra.engine.evaluation import predict
from lra.engine.finished import trained_model, trained_record
from lra.jobs import run_job
from lra.records import make_record, write_records
from tasks import load_task

PROG = "lra-compress"
log = logging.getLogger("lra.compress")


def compress(cfg: DictConfig, out: Path, progress: bool, previous: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Measure the float model and each compression of it; write and return the records, after
    every one. `previous` records of this config (an interrupted job's) are kept unless failed."""
    setup_device(cfg.hardware)
    data = load_task(cfg.task, cfg.data, progress=progress)
    model = trained_model(Path(cfg.compress.run), cfg, "run")
    reference = predict(model, data.test, cfg, CPU)[0]
    layers = list(compressed_layers(model))
    kept = {r["compression"]: r for r in previous if r["status"] != "failed"}
    records: list[dict[str, Any]] = []
    bar = tqdm(compressions(cfg, data, progress).items(), desc=f"compressing {cfg.model.name}",
               disable=None if progress else True)
    for compression, (compressor, facts) in bar:
        bar.set_postfix(model=compression or "float")
        if compression not in kept:
            started = time.perf_counter()
            result = outcome(cfg, compression, lambda: compressor(model), facts,
                             None if compression is None else reference, layers, data)
            kept[compression] = compress_record(cfg, compression, result, time.perf_counter() - started)
        records.append(kept[compression])
        write_records(out, records)  # after every model: a crash loses nothing measured
    return records


def compress_record(cfg: DictConfig, compression: str | None, result: Outcome, wall_s: float) -> dict[str, Any]:
    """The record of one model measured (`compression`: None for the float model)."""
    return make_record(cfg, kind="compress", status=result.status, error=result.error, metrics=result.metrics,
                       seq_len=cfg.task.max_len, batch_size=cfg.compress.batch_size, env=environment(CPU),
                       wall_s=wall_s, compression=compression)


def failed_records(cfg: DictConfig, status: str, error: str) -> list[dict[str, Any]]:
    """The records of a job that raised: one per compression, each with the job's error."""
    return [compress_record(cfg, compression, Outcome(status, {}, error), 0.0) for compression in compressions(cfg)]


def check_input(settings: DictConfig) -> None:
    """A single run's input, checked before Hydra creates its directory (by default inside `run`;
    conf/hydra/callbacks/checked.yaml): bad settings, or a `run` that is not a finished lra-train run,
    end in one line, nothing written."""
    check_settings(settings)
    trained_record(Path(settings.run), "run")


@hydra.main(config_path=str(CONF_DIR), config_name="compress", version_base="1.3")
def main(settings: DictConfig) -> None:
    """One job: skipped when its directory holds this config's finished records, resumed at the
    first compression it has no record of. In a sweep, a job whose input is bad logs why and
    writes nothing (the sweep's summary counts it as failed); the others go on."""
    hydra_cfg = HydraConfig.get()
    out = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode is RunMode.MULTIRUN
    with reported(PROG), resumable(lambda: records_kept(out)):
        try:
            cfg = job_config(settings)
        except USER_ERRORS as error:
            if not sweep:
                raise
            log.error("job not run: %s", describe(error))
            return
        records = run_job(
            cfg, out, expected=len(compressions(cfg)),
            work=lambda previous: compress(cfg, out, settings.progress, previous),
            failure=lambda status, error: failed_records(cfg, status, error), isolate=sweep,
        )
    if any(r["status"] == "failed" for r in records) and not sweep:
        sys.exit(1)


def cli() -> None:
    run(main, PROG)


if __name__ == "__main__":
    cli()
