"""lra-train: train one model variant on one task, keep the best checkpoint by validation
accuracy, test it (or the final weights: trainer.test_checkpoint), and write the job's records.jsonl
(the engine: lra.engine.training). Under protocol=lra it logs the LRA config file it follows.

    lra-train model=full task=listops hardware=cpu [key=value ...]   (-m to sweep)

Rerunning the same command in the same run directory (hydra.run.dir) resumes from the last
checkpoint: model, optimizer, scheduler, RNG, step, and so the data order, are restored; a run
whose record is already there is skipped (lra.jobs). Ctrl-C stops a run after the step under way,
saved (lra.engine.loop), with one line naming the command that resumes it, and exit status 130.

Under torchrun (`torchrun --nproc_per_node=N -m runners.train ...`) the processes train one model
data-parallel (lra.distributed): each step's batch is dealt out over them, gradients, losses,
accuracies and token counts are summed over them, and rank 0 alone writes.
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

from lra import checkpoint, distributed
from lra.cli import reported, resumable, run
from lra.config import CONF_DIR
from lra.engine.resume import LAST
from lra.engine.training import TENSORBOARD, failed_record, train
from lra.jobs import run_job
from lra.records import write_records

PROG = "lra-train"
log = logging.getLogger("lra.train")


def checkpoint_kept(run_dir: Path) -> str:
    """What a run interrupted outside its training loop (which says so itself) keeps: its last checkpoint."""
    last = run_dir / LAST
    return f"interrupted; the last checkpoint is in {last.parent}" if last.exists() else "interrupted before training"


def train_run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train, and write the run's record (rank 0)."""
    protocol = cfg.protocol
    if protocol.source:
        log.info("protocol %s: %s%s", protocol.name, protocol.source, f" ({protocol.note})" if protocol.note else "")
    record = train(cfg, run_dir)
    if distributed.is_main():
        path = write_records(run_dir, [record])
        log.info("%s: %s, test accuracy %s", path, record["status"], record["metrics"].get("test_accuracy"))
    return record


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """One job: skipped when its run directory holds this config's finished record; in a sweep, a
    job that raises writes a `failed` (or `oom`) record and the sweep goes on."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode is RunMode.MULTIRUN
    started = time.perf_counter()
    if not distributed.is_main():
        logging.getLogger("lra").setLevel(logging.WARNING)  # rank 0 tells the story
    with reported(PROG), resumable(lambda: checkpoint_kept(run_dir)):
        [record] = run_job(
            cfg, run_dir, expected=1, work=lambda previous: [train_run(cfg, run_dir)],
            failure=lambda status, error: [failed_record(cfg, status, error, time.perf_counter() - started)],
            outputs=(checkpoint.DIRECTORY, TENSORBOARD), isolate=sweep,
        )
    if record["status"] != "ok" and not sweep:
        sys.exit(1)


def cli() -> None:
    distributed.start()  # under torchrun: join the other processes before composing the config
    try:
        run(main, PROG)
    finally:
        distributed.stop()


if __name__ == "__main__":
    cli()
