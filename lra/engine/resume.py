"""The resumable state of a training run: what its last checkpoint carries, and its best model.

Rerunning a run in its directory resumes from the last checkpoint exactly: model, optimizer,
scheduler, loss scaler, RNG, step, and so the data order, are restored. The best checkpoint holds
the weights of the best validation accuracy alone (lra.checkpoint: no fallback). A finished run's
last checkpoint holds its final weights: those tested under `trainer.test_checkpoint: last`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lra import checkpoint
from lra.config import TestCheckpoint
from lra.engine.step import Trainee
from lra.errors import LRAError

log = logging.getLogger("lra.train")
LAST = Path(checkpoint.DIRECTORY) / checkpoint.LAST  # relative to the run directory
BEST = Path(checkpoint.DIRECTORY) / checkpoint.BEST


@dataclass
class RunState:
    """What a checkpoint carries besides the model, optimizer and scheduler states."""

    config_hash: str  # of the config that made it: a run resumes only under the same config
    step: int = 0
    best_val: float = -1.0
    train_seconds: float = 0.0
    tokens: int = 0
    peak_memory_mb: float | None = None
    memory_measure: str | None = None
    # the last trainer.log_every losses ("loss") and the terms of the objective, if it names any
    recent_losses: dict[str, list[float]] = field(default_factory=dict)
    # every validation so far (as lra.records.Validation): the run's learning curve
    history: list[dict[str, float]] = field(default_factory=list)

    def train_loss(self, term: str = "loss") -> float | None:
        return float(np.mean(self.recent_losses[term])) if self.recent_losses.get(term) else None

    def add_losses(self, losses: dict[str, float], keep: int) -> None:
        for term, value in losses.items():
            self.recent_losses[term] = (self.recent_losses.get(term, []) + [value])[-keep:]


def restore(path: Path, run_hash: str, trainee: Trainee) -> RunState:
    """Resume from the last checkpoint in the run directory, if there is one."""
    saved = checkpoint.load(path)
    if saved is None:
        return RunState(config_hash=run_hash)
    if saved["run_state"]["config_hash"] != run_hash:
        raise LRAError(
            f"{path}: checkpoint of a different config (hash {saved['run_state']['config_hash']}, "
            f"this run {run_hash}); force=true starts over, or choose another hydra.run.dir"
        )
    trainee.model.load_state_dict(saved["model"])
    trainee.optimizer.load_state_dict(saved["optimizer"])
    trainee.scheduler.load_state_dict(saved["scheduler"])
    trainee.scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["rng_cpu"])
    if "rng_cuda" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng_cuda"])
    log.info("resumed from %s at step %d", path, saved["run_state"]["step"])
    return RunState(**saved["run_state"])


def save_last(path: Path, state: RunState, trainee: Trainee) -> None:
    """The resumable state of the run: everything `restore` needs to continue exactly."""
    saved = {
        "run_state": vars(state),
        "model": trainee.model.state_dict(),
        "optimizer": trainee.optimizer.state_dict(),
        "scheduler": trainee.scheduler.state_dict(),
        "scaler": trainee.scaler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        saved["rng_cuda"] = torch.cuda.get_rng_state_all()
    checkpoint.save(path, saved)


def save_best(run_dir: Path, model: torch.nn.Module) -> None:
    """The weights of a new best validation accuracy, replacing the previous best (no fallback)."""
    checkpoint.save(run_dir / BEST, {"model": model.state_dict()}, fallback=False)


def best_model(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights of the run's best validation accuracy: that checkpoint or an error, never an
    older best (lra.checkpoint)."""
    saved = checkpoint.load(run_dir / BEST, fallback=False)
    if saved is None:
        raise LRAError(f"{run_dir / BEST}: missing, so the best model is lost; rerun with force=true")
    return saved["model"]


def tested_weights(model: torch.nn.Module, run_dir: Path, which: TestCheckpoint) -> dict[str, torch.Tensor]:
    """The weights to test, put in `model` (a run's model after its final step): those of the best
    checkpoint, or the final ones the model already holds."""
    if which is TestCheckpoint.best:
        model.load_state_dict(best_model(run_dir))
    return model.state_dict()
