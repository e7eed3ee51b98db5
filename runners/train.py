"""lra-train: train one model variant on one task, keep the best checkpoint by validation
accuracy, test it, and write the job's records.jsonl.

    lra-train model=full task=listops hardware=cpu [key=value ...]   (-m to sweep)

Rerunning the same command in the same run directory (hydra.run.dir) resumes from the last
checkpoint: model, optimizer, scheduler, RNG, step, and so the data order, are restored.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm

from lra import checkpoint
from lra.cli import reported, run
from lra.config import CONF_DIR, Device, Precision
from lra.errors import LRAError
from lra.measure import peak_memory
from lra.optim import build_optimizer, build_scheduler
from lra.records import config_hash, make_record, resolved, write_records
from models.encoder import Classifier
from tasks import load_task
from tasks.batching import SequenceDataset, StepBatches, pad_batch

log = logging.getLogger("lra.train")


@dataclass
class RunState:
    """What a checkpoint carries besides the model, optimizer and scheduler states."""

    step: int = 0
    best_val: float = -1.0
    train_seconds: float = 0.0
    tokens: int = 0
    peak_memory_mb: float | None = None
    memory_measure: str | None = None


def setup_device(hardware: DictConfig) -> torch.device:
    device = torch.device(Device(hardware.device).value)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LRAError(f"hardware.device: hardware={hardware.name} needs CUDA, which this torch build cannot see")
    if hardware.threads > 0:
        torch.set_num_threads(hardware.threads)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device, precision: Precision) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision is Precision.bf16)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: SequenceDataset, cfg: DictConfig, device: torch.device) -> float:
    """Accuracy on `dataset` (its first trainer.eval_batches batches, when set)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=cfg.trainer.batch_size, collate_fn=pad_batch)
    correct = total = 0
    for index, (tokens, mask, labels) in enumerate(loader):
        if cfg.trainer.eval_batches is not None and index >= cfg.trainer.eval_batches:
            break
        with autocast(device, Precision(cfg.hardware.precision)):
            logits = model(tokens.to(device), mask.to(device))
        correct += int((logits.argmax(-1).cpu() == labels).sum())
        total += len(labels)
    return correct / total


def restore(path: Path, expected_hash: str, model, optimizer, scheduler) -> RunState:
    """Resume from the last checkpoint in the run directory, if there is one."""
    saved = checkpoint.load(path)
    if saved is None:
        return RunState()
    if saved["config_hash"] != expected_hash:
        raise LRAError(
            f"{path}: checkpoint of a different config (hash {saved['config_hash']}, this run {expected_hash}); "
            "use another hydra.run.dir or delete the checkpoint"
        )
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng_cpu"])
    if "rng_cuda" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng_cuda"])
    log.info("resumed from %s at step %d", path, saved["run_state"]["step"])
    return RunState(**saved["run_state"])


def save_last(path: Path, run_hash: str, run_state: RunState, model, optimizer, scheduler) -> None:
    state = {
        "config_hash": run_hash,
        "run_state": vars(run_state),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    checkpoint.save(path, state)


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


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train, validate, test the best checkpoint; write and return the job's record."""
    started = time.perf_counter()
    device = setup_device(cfg.hardware)
    seed_everything(cfg.seed)
    data = load_task(cfg.task, cfg.data, progress=cfg.trainer.progress)
    model = Classifier(cfg.model, data.vocab_size, cfg.task.num_classes, cfg.task.max_len).to(device)
    optimizer = build_optimizer(model, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.optimizer, cfg.trainer.max_steps)
    run_hash = config_hash(cfg)
    last_path, best_path = run_dir / "checkpoints" / checkpoint.LAST, run_dir / "checkpoints" / checkpoint.BEST
    run_state = restore(last_path, run_hash, model, optimizer, scheduler)
    batches = StepBatches(len(data.train), cfg.trainer.batch_size, cfg.seed, run_state.step, cfg.trainer.max_steps)
    loader = DataLoader(  # its own generator: creating the iterator must not draw from the global RNG
        data.train, batch_sampler=batches, collate_fn=pad_batch, num_workers=cfg.hardware.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    step_fn = torch.compile(model) if cfg.hardware.compile else model
    precision = Precision(cfg.hardware.precision)
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    status, error, recent_losses = "ok", None, []
    bar = tqdm(
        total=cfg.trainer.max_steps, initial=run_state.step, desc=f"{cfg.model.name} on {cfg.task.name}",
        disable=None if cfg.trainer.progress else True, dynamic_ncols=True,
    )
    tick = time.perf_counter()
    for tokens, mask, labels in loader:
        tokens, mask, labels = tokens.to(device), mask.to(device), labels.to(device)
        model.train()
        measure = run_state.peak_memory_mb is None and len(optimizer.state) > 0  # a steady-state step
        with peak_memory(device) if measure else nullcontext() as memory:
            with autocast(device, precision):
                loss = F.cross_entropy(step_fn(tokens, mask).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optimizer.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip)
            optimizer.step()
        loss_value = loss.item()
        if measure:
            run_state.peak_memory_mb, run_state.memory_measure = round(memory.mb, 3), memory.measure
        if not np.isfinite(loss_value):
            status, error = "diverged", f"loss became {loss_value} at step {run_state.step + 1}"
            log.error(error)
            break
        scheduler.step()
        run_state.step += 1
        run_state.tokens += int(mask.sum())
        run_state.train_seconds += time.perf_counter() - tick
        recent_losses = (recent_losses + [loss_value])[-cfg.trainer.log_every :]
        bar.update(1)
        if run_state.step % cfg.trainer.log_every == 0:
            writer.add_scalar("train/loss", float(np.mean(recent_losses)), run_state.step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], run_state.step)
            writer.add_scalar("train/steps_per_s", run_state.step / run_state.train_seconds, run_state.step)
            writer.add_scalar("train/tokens_per_s", run_state.tokens / run_state.train_seconds, run_state.step)
            bar.set_postfix(loss=f"{np.mean(recent_losses):.3f}", best_val=f"{max(run_state.best_val, 0):.3f}")
        final = run_state.step == cfg.trainer.max_steps
        if run_state.step % cfg.trainer.eval_every == 0 or final:
            val = evaluate(step_fn, data.val, cfg, device)
            writer.add_scalar("val/accuracy", val, run_state.step)
            log.info("step %d: val accuracy %.4f", run_state.step, val)
            if val > run_state.best_val:
                run_state.best_val = val
                checkpoint.save(best_path, {"config_hash": run_hash, "step": run_state.step, "model": model.state_dict()})
        if run_state.step % cfg.trainer.checkpoint_every == 0 or final:
            save_last(last_path, run_hash, run_state, model, optimizer, scheduler)
        tick = time.perf_counter()
    bar.close()

    metrics: dict[str, Any] = {"steps": run_state.step, "train_loss": float(np.mean(recent_losses)) if recent_losses else None}
    if status == "ok":
        best = checkpoint.load(best_path)
        model.load_state_dict(best["model"])
        metrics["test_accuracy"] = evaluate(model, data.test, cfg, device)
        metrics["val_accuracy"] = run_state.best_val
        metrics["test_majority_rate"] = data.test.majority_rate()
        log_hparams(writer, cfg, {"test/accuracy": metrics["test_accuracy"], "val/best_accuracy": run_state.best_val})
    if run_state.train_seconds > 0:
        metrics["steps_per_s"] = run_state.step / run_state.train_seconds
        metrics["tokens_per_s"] = run_state.tokens / run_state.train_seconds
    metrics["peak_memory_mb"] = run_state.peak_memory_mb
    metrics["memory_measure"] = run_state.memory_measure
    writer.close()
    record = make_record(
        cfg, kind="train", status=status, error=error, metrics=metrics, seq_len=cfg.task.max_len,
        batch_size=cfg.trainer.batch_size, device=device, wall_s=time.perf_counter() - started,
    )
    path = write_records(run_dir, [record])
    log.info("%s: %s, test accuracy %s", path, status, metrics.get("test_accuracy"))
    return record


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    with reported("lra-train"):
        record = train(cfg, Path(hydra_cfg.runtime.output_dir))
    if record["status"] != "ok" and hydra_cfg.mode is RunMode.RUN:
        sys.exit(1)


def cli() -> None:
    run(main, "lra-train")


if __name__ == "__main__":
    cli()
