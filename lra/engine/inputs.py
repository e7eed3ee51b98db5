"""What speed and memory are measured on: random batches of a task's vocabulary, and its model
built for a given length (lra-bench, lra-compress)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from models.encoder import Classifier
from tasks import task_config


def inputs(cfg: DictConfig, length: int, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Random tokens of the task's vocabulary, no padding, random labels: one batch at `length`."""
    task = task_config(cfg.task)
    shape = (batch, length) if task.towers == 1 else (batch, task.towers, length)
    tokens = torch.randint(task.vocab_size, shape, device=device)
    mask = torch.ones(shape, dtype=torch.bool, device=device)
    return tokens, mask, torch.randint(task.num_classes, (batch,), device=device)


def build_model(cfg: DictConfig, length: int, device: torch.device) -> Classifier:
    """The task's model (two towers for a matching task) for inputs of up to `length` tokens."""
    task = task_config(cfg.task)
    return Classifier(cfg.model, task.vocab_size, task.num_classes, length, task.towers).to(device)
