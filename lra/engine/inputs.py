"""What a model is fed: a run's data in padded batches (lra-train), and what speed and memory are
measured on, random batches of a task's vocabulary and its model built for a given length
(lra-bench, lra-compress)."""

from __future__ import annotations

import functools
from typing import Any

import torch
from omegaconf import DictConfig

from lra.engine.device import pins_memory
from models.encoder import Classifier
from tasks import task_config
from tasks.batching import pad_batch


def pad_multiple(cfg: DictConfig) -> int:
    """What batch lengths are rounded up to a multiple of: hardware.pad_multiple, or by default
    task.max_len for a compiled model (every batch one length, so one graph) and 1 otherwise."""
    multiple = cfg.hardware.pad_multiple
    if multiple is None:
        return cfg.task.max_len if cfg.hardware.compile else 1
    return multiple


def loader_options(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """DataLoader arguments of every loader of a run's data: batches padded as `pad_multiple` says
    (never past task.max_len), built in pinned memory for a CUDA device."""
    collate = functools.partial(pad_batch, multiple=pad_multiple(cfg), limit=cfg.task.max_len)
    return {"collate_fn": collate, "pin_memory": pins_memory(device)}


def inputs(cfg: DictConfig, length: int, batch: int, device: torch.device) -> tuple[torch.Tensor | None, ...]:
    """Random tokens of the task's vocabulary, no padding (a mask of None, as `pad_batch` gives
    for a batch without padding), random labels: one batch at `length`."""
    task = task_config(cfg.task)
    shape = (batch, length) if task.towers == 1 else (batch, task.towers, length)
    tokens = torch.randint(task.vocab_size, shape, device=device)
    return tokens, None, torch.randint(task.num_classes, (batch,), device=device)


def build_model(cfg: DictConfig, length: int, device: torch.device) -> Classifier:
    """The task's model (two towers for a matching task) for inputs of up to `length` tokens."""
    task = task_config(cfg.task)
    return Classifier(cfg.model, task.vocab_size, task.num_classes, length, task.towers).to(device)
