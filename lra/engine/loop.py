"""The training loop: from a run's state to trainer.max_steps, validating, checkpointing and
logging to TensorBoard on the way.

Under torchrun each step's batch is dealt out over the processes (lra.distributed); losses and
token counts are summed over them, and rank 0 alone writes checkpoints and TensorBoard.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm

from lra import distributed
from lra.engine.evaluation import evaluate, validation_limit
from lra.engine.resume import LAST, RunState, save_best, save_last
from lra.engine.step import Trainee, train_step
from lra.measure import memory_cap, peak_memory
from lra.records import Validation, resolved
from tasks.batching import StepBatches, TaskData, pad_batch

log = logging.getLogger("lra.train")


def fit(
    trainee: Trainee, data: TaskData, cfg: DictConfig, device: torch.device, run_dir: Path, state: RunState,
    writer: SummaryWriter | None,
) -> str | None:
    """Train from `state.step` to trainer.max_steps, validating and checkpointing on the way.

    Returns None, or the one-line reason the loss diverged. `writer`: rank 0's alone.
    """
    batches = StepBatches(len(data.train), cfg.trainer.batch_size, cfg.seed, state.step, cfg.trainer.max_steps,
                          shard=distributed.rank(), shards=distributed.world_size())
    loader = DataLoader(  # its own generator: creating the iterator must not draw from the global RNG
        data.train, batch_sampler=batches, collate_fn=pad_batch, num_workers=cfg.hardware.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    cap = memory_cap(cfg.hardware) if device.type == "cpu" else None  # every step runs under it
    bar = tqdm(
        total=cfg.trainer.max_steps, initial=state.step, desc=f"{cfg.model.name} on {cfg.task.name}",
        disable=None if cfg.trainer.progress and distributed.is_main() else True, dynamic_ncols=True,
    )
    with bar:
        tick = time.perf_counter()
        for batch in loader:
            measure = state.peak_memory_mb is None and len(trainee.optimizer.state) > 0  # a steady-state step
            with peak_memory(device, cap) if measure or cap else nullcontext() as memory:
                losses = {term: value.item() for term, value in train_step(trainee, batch, cfg, device).items()}
            # the whole batch's: every process's mean losses (equal shares), and real tokens of both
            # documents of a two-tower task
            *summed, tokens = distributed.all_sum([*losses.values(), float(batch[1].sum())], device)
            losses = {term: value / distributed.world_size() for term, value in zip(losses, summed)}
            loss = losses["loss"]
            if measure:
                state.peak_memory_mb, state.memory_measure = round(memory.mb, 3), memory.measure
            if not np.isfinite(loss):
                return f"loss became {loss} at step {state.step + 1}"
            trainee.scheduler.step()
            state.step += 1
            state.tokens += int(tokens)
            state.train_seconds += time.perf_counter() - tick
            state.add_losses(losses, cfg.trainer.log_every)
            bar.update(1)
            if state.step % cfg.trainer.log_every == 0 and writer is not None:
                log_training(writer, state, trainee)
                bar.set_postfix(loss=f"{state.train_loss():.3f}", best_val=f"{max(state.best_val, 0):.3f}")
            final = state.step == cfg.trainer.max_steps
            if state.step % cfg.trainer.eval_every == 0 or final:
                validate(trainee, data, cfg, device, run_dir, state, writer)
            if (state.step % cfg.trainer.checkpoint_every == 0 or final) and distributed.is_main():
                save_last(run_dir / LAST, state, trainee)
            tick = time.perf_counter()
    return None


def validate(trainee: Trainee, data: TaskData, cfg: DictConfig, device: torch.device, run_dir: Path,
             state: RunState, writer: SummaryWriter | None) -> None:
    """A periodic validation: its accuracy and loss logged and kept in the run's history (the
    learning curve), and the model saved as the best when it is."""
    scores = evaluate(trainee.forward, data.val, cfg, device, "val", validation_limit(cfg))
    val = scores["val_accuracy"]
    state.history.append(asdict(Validation(
        step=state.step, train_seconds=round(state.train_seconds, 3), examples=state.step * cfg.trainer.batch_size,
        val_accuracy=val, val_loss=scores["val_loss"])))
    log.info("step %d: val accuracy %.4f, loss %.4f", state.step, val, scores["val_loss"])
    if writer is not None:
        writer.add_scalar("val/accuracy", val, state.step)
        writer.add_scalar("val/loss", scores["val_loss"], state.step)
    if val > state.best_val:
        state.best_val = val
        if distributed.is_main():
            save_best(run_dir, trainee.model)


def log_training(writer: SummaryWriter, state: RunState, trainee: Trainee) -> None:
    """The recent losses (and the objective's terms), learning rate and throughput, at this step."""
    for term in state.recent_losses:
        writer.add_scalar("train/loss" if term == "loss" else f"train/loss_{term}", state.train_loss(term),
                          state.step)
    writer.add_scalar("train/lr", trainee.scheduler.get_last_lr()[0], state.step)
    writer.add_scalar("train/steps_per_s", state.step / state.train_seconds, state.step)
    writer.add_scalar("train/tokens_per_s", state.tokens / state.train_seconds, state.step)


def log_hparams(writer: SummaryWriter, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """The run's resolved config and final metrics for TensorBoard's hparams plugin, in this run's own log."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk(resolved(cfg), "")
    file_writer = writer._get_file_writer()
    for summary in hparams(flat, metrics):
        file_writer.add_summary(summary)
    for tag, value in metrics.items():
        writer.add_scalar(tag, value)
