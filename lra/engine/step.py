"""The model being trained and one optimisation step, as lra-train, lra-bench and lra-compress run it."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel

from lra.config import Precision
from lra.engine.device import autocast, to_device
from lra.engine.objectives import Objective, cross_entropy
from lra.errors import LRAError
from models.attention import Attention


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


def split(t: torch.Tensor | None, parts: int) -> tuple[torch.Tensor | None, ...]:
    """`t` cut into `parts` micro-batches along the batch; a mask of None (no padding) stays None."""
    return (None,) * parts if t is None else t.chunk(parts)


def micro_batch(cfg: DictConfig) -> int:
    """Examples per forward pass: trainer.batch_size (the examples of an optimizer step) split into
    trainer.accumulate micro-batches of equal size."""
    check_accumulation(cfg, "trainer.batch_size", cfg.trainer.batch_size)
    return cfg.trainer.batch_size // cfg.trainer.accumulate


def check_accumulation(cfg: DictConfig, batch_key: str, batch: int) -> None:
    """LRAError naming both keys unless trainer.accumulate splits `batch` examples (those of config key
    `batch_key`: one training step's) into micro-batches of equal size."""
    accumulate = cfg.trainer.accumulate
    if batch % accumulate:
        raise LRAError(f"trainer.accumulate={accumulate}: must divide {batch_key}={batch} into equal micro-batches")


def train_step(
    trainee: Trainee, batch: tuple[torch.Tensor, ...], cfg: DictConfig, device: torch.device
) -> dict[str, torch.Tensor]:
    """One optimisation step (forward and backward of trainer.accumulate micro-batches, clip, update).

    The micro-batches' gradients add up to the gradient of the whole batch's mean loss. They are
    released once the optimizer has used them, so that no gradient outlives its step: between
    steps (validation, checkpoints) memory holds none, and a step's peak memory counts the
    gradients it makes on every device alike (lra.measure). Returns the mean loss before the
    update ("loss") and the objective's terms, as tensors on the device: nothing in a step waits
    for the device, the caller reads them when it needs the numbers. The batch's mask is None
    when nothing is padded (`tasks.batching.pad_batch`).
    """
    tokens, mask, labels = to_device(batch, device)
    trainee.model.train()
    forward = trainee.synced or trainee.forward
    micro_batches = list(zip(*(split(t, cfg.trainer.accumulate) for t in (tokens, mask, labels))))
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
