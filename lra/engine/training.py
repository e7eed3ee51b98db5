"""A whole lra-train run: build the model and what trains it, resume, train, test the best
checkpoint or the final weights (trainer.test_checkpoint), and make the run's record (the runner
writes it).

A record's `val_accuracy` is the best validation accuracy whichever weights are tested; `tested`
names them (best or last), and `last_val_accuracy` is the last validation's, that of the final weights.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from lra import checkpoint, distributed
from lra.config import Precision, TestCheckpoint, check_ranges
from lra.engine.device import configured_device, environment, loss_scaler, seed_everything, setup_device
from lra.engine.evaluation import evaluate, validation_limit
from lra.engine.loop import fit, log_hparams
from lra.engine.objectives import Objective, objective
from lra.engine.resume import LAST, RunState, restore, tested_weights
from lra.engine.step import Trainee, micro_batch
from lra.optim import build_optimizer, build_scheduler
from lra.records import config_hash, make_record
from models.encoder import Classifier, check_model_config
from tasks import load_task, task_config

log = logging.getLogger("lra.train")
TENSORBOARD = "tensorboard"  # in the run directory, beside records.jsonl


def trainee(cfg: DictConfig, device: torch.device, loss: Objective) -> Trainee:
    """The model of the config on `device` (its init drawn from the global RNG) and what trains
    it with the objective `loss`."""
    task = task_config(cfg.task)
    model = Classifier(cfg.model, task.vocab_size, task.num_classes, task.max_len, task.towers).to(device)
    optimizer = build_optimizer(model, cfg.optimizer)
    forward = torch.compile(model) if cfg.hardware.compile else model
    synced = None
    if distributed.world_size() > 1:
        synced = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
    return Trainee(
        model=model, forward=forward, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.optimizer, cfg.trainer.max_steps),
        synced=synced, objective=loss, scaler=loss_scaler(device, Precision(cfg.hardware.precision)),
    )


def check_train_config(cfg: DictConfig) -> None:
    """Fail at once, naming the keys, on a config no training could run: a value out of its range
    (lra.config), task keys that do not fit together, a model whose blocks cannot be built at
    task.max_len, or a batch that trainer.accumulate does not split evenly. lra-train runs it before
    Hydra creates the run directory (conf/hydra/callbacks/checked.yaml) and at the start of every job."""
    check_ranges(cfg)
    task_config(cfg.task).check()
    check_model_config(cfg.model, cfg.task.max_len)
    micro_batch(cfg)


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train, validate, test the weights trainer.test_checkpoint names; return the run's record.
    Checkpoints and TensorBoard go to `run_dir` (rank 0's alone)."""
    started = time.perf_counter()
    check_train_config(cfg)
    micro_batch_size = micro_batch(cfg)
    device = setup_device(cfg.hardware)
    seed_everything(cfg.seed)
    loss, teacher = objective(cfg, device)
    data = load_task(cfg.task, cfg.data, progress=cfg.trainer.progress)
    trained = trainee(cfg, device, loss)
    state = restore(run_dir / LAST, config_hash(cfg), trained)
    writes = distributed.is_main()
    with SummaryWriter(str(run_dir / TENSORBOARD)) if writes else nullcontext() as writer:
        diverged = fit(trained, data, cfg, device, run_dir, state, writer)
        metrics: dict[str, Any] = {
            "steps": state.step, "processes": distributed.world_size(), "micro_batch_size": micro_batch_size,
            "accumulate": cfg.trainer.accumulate, **teacher, "history": state.history,
            **{"train_loss" if term == "loss" else f"train_loss_{term}": state.train_loss(term)
               for term in state.recent_losses or ["loss"]},
        }
        if diverged is None:
            distributed.barrier()  # rank 0 has written the best checkpoint
            tested = TestCheckpoint(cfg.trainer.test_checkpoint)
            metrics["weights_mb"] = checkpoint.saved_mb(tested_weights(trained.model, run_dir, tested))
            metrics["tested"] = tested.value
            metrics.update(evaluate(trained.model, data.test, cfg, device, "test"))  # always the whole split
            metrics["val_accuracy"] = state.best_val
            metrics["last_val_accuracy"] = last_validation(state)
            metrics["val_examples"] = min(len(data.val), validation_limit(cfg) or len(data.val))
            if writes:
                log_hparams(writer, cfg, {"test/accuracy": metrics["test_accuracy"],
                                          "val/best_accuracy": state.best_val})
        else:
            log.error(diverged)
    if state.train_seconds > 0:
        metrics["steps_per_s"] = state.step / state.train_seconds
        metrics["tokens_per_s"] = state.tokens / state.train_seconds
    metrics["peak_memory_mb"] = state.peak_memory_mb
    metrics["memory_measure"] = state.memory_measure
    return make_record(
        cfg, kind="train", status="ok" if diverged is None else "diverged", error=diverged, metrics=metrics,
        seq_len=cfg.task.max_len, batch_size=cfg.trainer.batch_size, env=environment(device),
        wall_s=time.perf_counter() - started,
    )


def last_validation(state: RunState) -> float | None:
    """The accuracy of the run's last validation (at its final step: of the final weights)."""
    return state.history[-1]["val_accuracy"] if state.history else None


def failed_record(cfg: DictConfig, status: str, error: str, wall_s: float) -> dict[str, Any]:
    """The record of a train job that raised (status failed, or oom)."""
    return make_record(
        cfg, kind="train", status=status, error=error, metrics={}, seq_len=cfg.task.max_len,
        batch_size=cfg.trainer.batch_size, env=environment(configured_device(cfg.hardware)), wall_s=wall_s,
    )
