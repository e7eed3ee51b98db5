"""lra-train: train one model variant on one task, keep the best checkpoint by validation
accuracy, test it, and write the job's records.jsonl.

    lra-train model=full task=listops hardware=cpu [key=value ...]   (-m to sweep)

Rerunning the same command in the same run directory (hydra.run.dir) resumes from the last
checkpoint: model, optimizer, scheduler, RNG, step, and so the data order, are restored; a run
whose record is already there is skipped (lra.jobs).

Under torchrun (`torchrun --nproc_per_node=N -m runners.train ...`) the processes train one model
data-parallel (lra.distributed): each step's batch is dealt out over them, gradients, losses,
accuracies and token counts are summed over them, and rank 0 alone writes.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm

from lra import checkpoint, distributed
from lra.cli import reported, run
from lra.config import CONF_DIR, Device, Precision
from lra.errors import LRAError
from lra.jobs import run_job
from lra.measure import memory_cap, peak_memory
from lra.optim import build_optimizer, build_scheduler
from lra.predictions import class_counts, split_metrics
from lra.records import config_hash, make_record, resolved, write_records
from models.attention import Attention
from models.encoder import Classifier, check_model_config
from runners.distill import Objective, cross_entropy, objective
from tasks import load_task, task_config
from tasks.batching import SequenceDataset, StepBatches, TaskData, pad_batch

PROG = "lra-train"
log = logging.getLogger("lra.train")
TENSORBOARD = "tensorboard"  # in the run directory, beside records.jsonl
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

    def train_loss(self, term: str = "loss") -> float | None:
        return float(np.mean(self.recent_losses[term])) if self.recent_losses.get(term) else None

    def add_losses(self, losses: dict[str, float], keep: int) -> None:
        for term, value in losses.items():
            self.recent_losses[term] = (self.recent_losses.get(term, []) + [value])[-keep:]


@dataclass
class Trainee:
    """The model being trained and what updates it."""

    model: torch.nn.Module
    forward: torch.nn.Module  # the model, or its torch.compile'd form
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    synced: DistributedDataParallel | None = None  # `forward` in DistributedDataParallel, for steps across processes
    objective: Objective = cross_entropy
    # Scales the loss of fp16 steps (gradients too small for fp16 would vanish); disabled otherwise.
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False))
    attention: list[Attention] = field(init=False)  # the model's attention layers, told of every step

    def __post_init__(self) -> None:
        self.attention = [module for module in self.model.modules() if isinstance(module, Attention)]


def setup_device(hardware: DictConfig) -> torch.device:
    device = torch.device(Device(hardware.device).value)
    if device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LRAError(f"hardware.device: hardware={hardware.name} needs CUDA, which this torch build cannot see")
    if hardware.threads > 0:
        torch.set_num_threads(hardware.threads)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


DTYPES = {Precision.fp32: torch.float32, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}


def loss_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """The gradient scaler of fp16 steps; a disabled one (scaling nothing) at other precisions."""
    return torch.amp.GradScaler(device.type, enabled=precision is Precision.fp16)


def autocast(device: torch.device, precision: Precision) -> torch.autocast:
    """Mixed precision as the profile says: parameters, optimizer state and the loss stay fp32."""
    return torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision is not Precision.fp32)


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: SequenceDataset, cfg: DictConfig, device: torch.device,
            limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true labels of this process's share of `dataset` (of its first `limit`
    examples, when given), the examples dealt out over the processes, in micro-batches (what a
    training step's forward pass holds)."""
    model.eval()
    size = len(dataset) if limit is None else min(len(dataset), limit)
    shard = Subset(dataset, range(distributed.rank(), size, distributed.world_size()))
    loader = DataLoader(shard, batch_size=micro_batch(cfg), collate_fn=pad_batch)
    predicted, true = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)]  # a share may be empty
    for tokens, mask, labels in loader:
        with autocast(device, Precision(cfg.hardware.precision)):
            logits = model(tokens.to(device), mask.to(device))
        predicted.append(logits.argmax(-1).cpu())
        true.append(labels)
    return torch.cat(predicted), torch.cat(true)


def validation_limit(cfg: DictConfig) -> int | None:
    """The examples a periodic validation scores: the first trainer.eval_batches batches, or all."""
    batches = cfg.trainer.eval_batches
    return None if batches is None else batches * cfg.trainer.batch_size


def evaluate(model: torch.nn.Module, dataset: SequenceDataset, cfg: DictConfig, device: torch.device,
             split: str, limit: int | None = None) -> dict[str, Any]:
    """The `lra.predictions` metrics of `split` on `dataset` (its first `limit` examples, when
    given; else all of it), over every process's share."""
    return scored(split, *predict(model, dataset, cfg, device, limit), cfg, device)


def scored(split: str, predicted: torch.Tensor, labels: torch.Tensor, cfg: DictConfig,
           device: torch.device) -> dict[str, Any]:
    """The `lra.predictions` metrics of this process's `predicted` and true `labels` and every
    other process's."""
    classes = task_config(cfg.task).num_classes
    counts = distributed.all_sum([int((predicted == labels).sum()), *class_counts(predicted, classes),
                                  *class_counts(labels, classes)], device)
    counts = [int(count) for count in counts]
    return split_metrics(split, counts[0], counts[1:classes + 1], counts[classes + 1:])


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


def train_step(
    trainee: Trainee, batch: tuple[torch.Tensor, ...], cfg: DictConfig, device: torch.device
) -> dict[str, torch.Tensor]:
    """One optimisation step (forward and backward of trainer.accumulate micro-batches, clip, update).

    The micro-batches' gradients add up to the gradient of the whole batch's mean loss. They are
    released once the optimizer has used them, so that no gradient outlives its step: between
    steps (validation, checkpoints) memory holds none, and a step's peak memory counts the
    gradients it makes on every device alike (lra.measure). Returns the mean loss before the
    update ("loss") and the objective's terms.
    """
    tokens, mask, labels = (t.to(device) for t in batch)
    trainee.model.train()
    forward = trainee.synced or trainee.forward
    micro_batches = list(zip(*(t.chunk(cfg.trainer.accumulate) for t in (tokens, mask, labels))))
    losses: dict[str, torch.Tensor] = {}
    for number, (micro_tokens, micro_mask, micro_labels) in enumerate(micro_batches, start=1):
        share = len(micro_labels) / len(labels)
        # across processes, gradients are summed once, after the last micro-batch
        last = trainee.synced is None or number == len(micro_batches)
        with nullcontext() if last else trainee.synced.no_sync():
            with autocast(device, Precision(cfg.hardware.precision)):
                logits = forward(micro_tokens, micro_mask)
            loss, terms = trainee.objective(logits, micro_labels, micro_tokens, micro_mask)
            trainee.scaler.scale(loss * share).backward()
        for term, value in {"loss": loss.detach(), **terms}.items():
            losses[term] = losses.get(term, 0) + value * share
    trainee.scaler.unscale_(trainee.optimizer)
    if cfg.optimizer.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(trainee.model.parameters(), cfg.optimizer.grad_clip)
    trainee.scaler.step(trainee.optimizer)
    trainee.scaler.update()
    trainee.optimizer.zero_grad(set_to_none=True)
    for attention in trainee.attention:  # eager, outside any compiled region
        attention.on_train_step()
    return losses


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
                for term in state.recent_losses:
                    writer.add_scalar("train/loss" if term == "loss" else f"train/loss_{term}", state.train_loss(term),
                                      state.step)
                writer.add_scalar("train/lr", trainee.scheduler.get_last_lr()[0], state.step)
                writer.add_scalar("train/steps_per_s", state.step / state.train_seconds, state.step)
                writer.add_scalar("train/tokens_per_s", state.tokens / state.train_seconds, state.step)
                bar.set_postfix(loss=f"{state.train_loss():.3f}", best_val=f"{max(state.best_val, 0):.3f}")
            final = state.step == cfg.trainer.max_steps
            if state.step % cfg.trainer.eval_every == 0 or final:
                val = evaluate(trainee.forward, data.val, cfg, device, "val", validation_limit(cfg))["val_accuracy"]
                log.info("step %d: val accuracy %.4f", state.step, val)
                if writer is not None:
                    writer.add_scalar("val/accuracy", val, state.step)
                if val > state.best_val:
                    state.best_val = val
                    if distributed.is_main():
                        checkpoint.save(run_dir / BEST, {"model": trainee.model.state_dict()}, fallback=False)
            if (state.step % cfg.trainer.checkpoint_every == 0 or final) and distributed.is_main():
                save_last(run_dir / LAST, state, trainee)
            tick = time.perf_counter()
    return None


def best_model(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights of the run's best validation accuracy: that checkpoint or an error, never an
    older best (lra.checkpoint)."""
    saved = checkpoint.load(run_dir / BEST, fallback=False)
    if saved is None:
        raise LRAError(f"{run_dir / BEST}: missing, so the best model is lost; rerun with force=true")
    return saved["model"]


def micro_batch(cfg: DictConfig) -> int:
    """Examples per forward pass: trainer.batch_size (the examples of an optimizer step) split into
    trainer.accumulate micro-batches of equal size."""
    batch, accumulate = cfg.trainer.batch_size, cfg.trainer.accumulate
    if accumulate < 1:
        raise LRAError(f"trainer.accumulate: must be at least 1, got {accumulate}")
    if batch % accumulate:
        raise LRAError(f"trainer.accumulate: must divide trainer.batch_size={batch} into equal micro-batches, "
                       f"got {accumulate}")
    return batch // accumulate


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train, validate, test the best checkpoint; write and return the job's record."""
    started = time.perf_counter()
    check_model_config(cfg.model, cfg.task.max_len)
    micro_batch_size = micro_batch(cfg)
    device = setup_device(cfg.hardware)
    seed_everything(cfg.seed)
    loss, teacher = objective(cfg, device)
    data = load_task(cfg.task, cfg.data, progress=cfg.trainer.progress)
    task = task_config(cfg.task)
    model = Classifier(cfg.model, task.vocab_size, task.num_classes, task.max_len, task.towers).to(device)
    optimizer = build_optimizer(model, cfg.optimizer)
    forward = torch.compile(model) if cfg.hardware.compile else model
    trainee = Trainee(
        model=model,
        forward=forward,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.optimizer, cfg.trainer.max_steps),
        synced=DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
        if distributed.world_size() > 1 else None,
        objective=loss,
        scaler=loss_scaler(device, Precision(cfg.hardware.precision)),
    )
    state = restore(run_dir / LAST, config_hash(cfg), trainee)
    writes = distributed.is_main()  # records, checkpoints and TensorBoard: rank 0's alone
    with SummaryWriter(str(run_dir / TENSORBOARD)) if writes else nullcontext() as writer:
        diverged = fit(trainee, data, cfg, device, run_dir, state, writer)
        metrics: dict[str, Any] = {
            "steps": state.step, "processes": distributed.world_size(), "micro_batch_size": micro_batch_size,
            "accumulate": cfg.trainer.accumulate, **teacher,
            **{"train_loss" if term == "loss" else f"train_loss_{term}": state.train_loss(term)
               for term in state.recent_losses or ["loss"]},
        }
        if diverged is None:
            distributed.barrier()  # rank 0 has written the best checkpoint
            best = best_model(run_dir)
            model.load_state_dict(best)
            metrics["weights_mb"] = checkpoint.saved_mb(best)
            metrics.update(evaluate(model, data.test, cfg, device, "test"))  # always the whole split
            metrics["val_accuracy"] = state.best_val
            metrics["val_examples"] = min(len(data.val), validation_limit(cfg) or len(data.val))
            if writes:
                log_hparams(writer, cfg, {"test/accuracy": metrics["test_accuracy"], "val/best_accuracy": state.best_val})
        else:
            log.error(diverged)
    if state.train_seconds > 0:
        metrics["steps_per_s"] = state.step / state.train_seconds
        metrics["tokens_per_s"] = state.tokens / state.train_seconds
    metrics["peak_memory_mb"] = state.peak_memory_mb
    metrics["memory_measure"] = state.memory_measure
    record = make_record(
        cfg, kind="train", status="ok" if diverged is None else "diverged", error=diverged, metrics=metrics,
        seq_len=cfg.task.max_len, batch_size=cfg.trainer.batch_size, device=device,
        wall_s=time.perf_counter() - started,
    )
    if writes:
        path = write_records(run_dir, [record])
        log.info("%s: %s, test accuracy %s", path, record["status"], metrics.get("test_accuracy"))
    return record


def failed_record(cfg: DictConfig, status: str, error: str, wall_s: float) -> dict[str, Any]:
    """The record of a job that raised (status failed, or oom)."""
    return make_record(
        cfg, kind="train", status=status, error=error, metrics={}, seq_len=cfg.task.max_len,
        batch_size=cfg.trainer.batch_size,
        device=torch.device(Device(cfg.hardware.device).value), wall_s=wall_s,
    )


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
    with reported(PROG):
        [record] = run_job(
            cfg, run_dir, expected=1, work=lambda previous: [train(cfg, run_dir)],
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
