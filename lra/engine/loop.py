"""The training loop: from a run's state to trainer.max_steps, validating, checkpointing and
logging to TensorBoard on the way.

Under torchrun each step's batch is dealt out over the processes (lra.distributed); losses and
token counts are summed over them, and rank 0 alone writes checkpoints and TensorBoard.

A step never waits for the device: its losses stay there (`Unread`) until a step that logs,
validates or checkpoints reads them all at once, and checks them for divergence then.

Ctrl-C stops the run between two steps, the last one saved (`Interruption`): a rerun resumes
from it as if the run had not stopped. A second Ctrl-C stops it at once; it resumes from its last
checkpoint then.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm

from lra import distributed
from lra.cli import Interrupted
from lra.engine.evaluation import evaluate, validation_limit
from lra.engine.inputs import loader_options
from lra.engine.resume import LAST, RunState, save_best, save_last
from lra.engine.step import Trainee, train_step
from lra.measure import memory_cap, peak_memory
from lra.records import Validation, resolved
from tasks.batching import StepBatches, TaskData

log = logging.getLogger("lra.train")


@dataclass
class Unread:
    """The steps whose losses have not been read yet: their losses, still on the device, and the
    real tokens of their batches, counted on the host (a CPU tensor or an int, never read per step)."""

    losses: list[dict[str, torch.Tensor]] = field(default_factory=list)
    tokens: torch.Tensor | int = 0

    def add(self, losses: dict[str, torch.Tensor], batch: tuple[torch.Tensor | None, ...]) -> None:
        """One step's losses and its batch's real tokens (every document of a two-tower task)."""
        self.losses.append(losses)
        tokens, mask = batch[:2]
        self.tokens = self.tokens + (tokens.numel() if mask is None else mask.sum())


def read_losses(unread: Unread, state: RunState, keep: int, device: torch.device) -> str | None:
    """Move the unread steps' losses and tokens into `state`, in one read of the device: the whole
    batch's losses (every process's mean, in equal shares) and tokens. Returns None, or the reason
    the loss diverged: the first unread step whose loss is not finite."""
    if not unread.losses:
        return None
    terms, steps = list(unread.losses[0]), len(unread.losses)
    values = torch.stack([torch.stack([step[term].float() for term in terms]) for step in unread.losses])
    *summed, tokens = distributed.all_sum([*values.flatten().tolist(), float(unread.tokens)], device)
    first = state.step - steps + 1
    unread.losses, unread.tokens = [], 0
    state.tokens += int(tokens)
    for step, row in enumerate(np.reshape(summed, (steps, len(terms))) / distributed.world_size(), start=first):
        losses = dict(zip(terms, row.tolist()))
        if not np.isfinite(losses["loss"]):
            return f"loss became {losses['loss']} at step {step}"
        state.add_losses(losses, keep)
    return None


class Interruption:
    """Ctrl-C (SIGINT) during the training loop, held until the step under way is done (`requested`),
    so that the run stops between two steps, never inside an optimizer step or a save, and can save
    where it stopped. A second Ctrl-C interrupts at once (`interruptible` names the last checkpoint).

    Held only in the main thread of a single process, where Ctrl-C would raise KeyboardInterrupt:
    Python sets signal handlers in the main thread alone, and the processes of a torchrun job could
    not agree on the step to stop after without a sync every step."""

    def __init__(self, saved_step: int | None) -> None:
        self.requested = False
        self.saved_step = saved_step  # the step of the run's last checkpoint; None before the first

    def hold(self, signum: int, frame: Any) -> None:
        """The signal handler: ask the loop to stop after this step; the next Ctrl-C interrupts."""
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def line(self, step: int, run_dir: Path) -> str:
        """What a run interrupted at once, after `step` steps, has saved."""
        if self.saved_step is None:
            return f"interrupted at step {step}, before its first checkpoint"
        return f"interrupted at step {step}; the last checkpoint (step {self.saved_step}) is in {run_dir / LAST.parent}"


@contextmanager
def interruptible(state: RunState, run_dir: Path) -> Iterator[Interruption]:
    """The training loop's Interruption: Ctrl-C held inside where it can be (see Interruption), and a
    KeyboardInterrupt raised inside turned into Interrupted, whose line says where the run stopped."""
    interruption = Interruption(state.step or None)  # a resumed run's last checkpoint is its start
    holds = (distributed.world_size() == 1 and threading.current_thread() is threading.main_thread()
             and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    if holds:
        signal.signal(signal.SIGINT, interruption.hold)
    try:
        yield interruption
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(interruption.line(state.step, run_dir)) from None
    finally:
        if holds:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def stop_saved(trainee: Trainee, cfg: DictConfig, device: torch.device, run_dir: Path, state: RunState,
               unread: Unread, saved: bool) -> str:
    """End a run that Ctrl-C asked to stop after the step just done: save that step (unless `saved`)
    and raise Interrupted. Returns the reason instead when the loss diverged: the run would have ended
    so at its next logging step."""
    diverged = read_losses(unread, state, cfg.trainer.log_every, device)
    if diverged is not None:
        return diverged
    if not saved:
        save_last(run_dir / LAST, state, trainee)
    raise Interrupted(f"interrupted at step {state.step}, which is saved in {run_dir / LAST}")


def fit(
    trainee: Trainee, data: TaskData, cfg: DictConfig, device: torch.device, run_dir: Path, state: RunState,
    writer: SummaryWriter | None,
) -> str | None:
    """Train from `state.step` to trainer.max_steps, validating and checkpointing on the way.

    Returns None, or the one-line reason the loss diverged; raises Interrupted (lra.cli) on Ctrl-C,
    after the step under way, saved (`Interruption`). `writer`: rank 0's alone.
    """
    batches = StepBatches(len(data.train), cfg.trainer.batch_size, cfg.seed, state.step, cfg.trainer.max_steps,
                          shard=distributed.rank(), shards=distributed.world_size())
    loader = DataLoader(  # its own generator: creating the iterator must not draw from the global RNG
        data.train, batch_sampler=batches, num_workers=cfg.hardware.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed), **loader_options(cfg, device),
    )
    cap = memory_cap(cfg.hardware) if device.type == "cpu" else None  # every step runs under it
    bar = tqdm(
        total=cfg.trainer.max_steps, initial=state.step, desc=f"{cfg.model.name} on {cfg.task.name}",
        disable=None if cfg.trainer.progress and distributed.is_main() else True, dynamic_ncols=True,
    )
    unread = Unread()
    with bar, interruptible(state, run_dir) as interruption:
        tick = time.perf_counter()
        for batch in loader:
            measure = state.peak_memory_mb is None and len(trainee.optimizer.state) > 0  # a steady-state step
            with peak_memory(device, cap) if measure or cap else nullcontext() as memory:
                unread.add(train_step(trainee, batch, cfg, device), batch)
            if measure:
                state.peak_memory_mb, state.memory_measure = round(memory.mb, 3), memory.measure
            trainee.scheduler.step()
            state.step += 1
            final = state.step == cfg.trainer.max_steps
            logs = state.step % cfg.trainer.log_every == 0
            validates = state.step % cfg.trainer.eval_every == 0 or final
            saves = state.step % cfg.trainer.checkpoint_every == 0 or final
            if logs or validates or saves:  # the steps that need the numbers read the device
                diverged = read_losses(unread, state, cfg.trainer.log_every, device)
                if diverged is not None:
                    return diverged
            state.train_seconds += time.perf_counter() - tick
            bar.update(1)
            if logs and writer is not None:
                log_training(writer, state, trainee)
                bar.set_postfix(loss=f"{state.train_loss():.3f}", best_val=f"{max(state.best_val, 0):.3f}")
            if validates:
                validate(trainee, data, cfg, device, run_dir, state, writer)
            if saves and distributed.is_main():
                save_last(run_dir / LAST, state, trainee)
                interruption.saved_step = state.step
            if interruption.requested:
                return stop_saved(trainee, cfg, device, run_dir, state, unread, saved=saves)
            tick = time.perf_counter()
    return read_losses(unread, state, cfg.trainer.log_every, device)


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
