"""Optimizer and learning-rate schedule built from the `optimizer` config group."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

from lra.config import Schedule


def build_optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.AdamW:
    """AdamW, with weight decay on weight matrices only (not on biases and norm scales)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def lr_factor(step: int, cfg: DictConfig, max_steps: int) -> float:
    """Multiplier of the base learning rate at `step` (0-based: the update about to be made)."""
    step = step + 1
    warmup = max(cfg.warmup_steps, 1)
    schedule = Schedule(cfg.schedule)
    if schedule is Schedule.rsqrt:  # LRA: constant * linear_warmup * rsqrt_decay
        return min(1.0, step / warmup) / math.sqrt(max(step, warmup))
    if step <= cfg.warmup_steps:
        return step / warmup
    if schedule is Schedule.cosine:
        progress = (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, max_steps))
