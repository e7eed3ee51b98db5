"""Optimizer and learning-rate schedule built from the `optimizer` config group."""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from lra.config import Decay, Schedule


def build_optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.AdamW:
    """AdamW: weight decay decoupled from the gradient and scaled by the scheduled learning rate,
    p <- p - lr * (adam_step + weight_decay * p), on the parameters `optimizer.decay` names.

    `decay: all` is the LRA repository's optimizer: flax's `optim.Adam(weight_decay=...)` (created in
    each task's train.py, `create_optimizer`), whose update (flax/optim/adam.py, apply_param_gradient)
    is `new_param = param - lr * grad_ema_corr / (sqrt(grad_sq_ema_corr) + eps)`, then
    `new_param -= lr * weight_decay * param`, on every parameter: torch's AdamW on all of them.
    `decay: matrices` spares biases and norm scales, as most transformer training does.
    """
    return torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def parameter_groups(model: nn.Module, cfg: DictConfig) -> list[dict[str, Any]]:
    """The model's parameters grouped by their weight decay: every one decayed (`all`), or the
    weight matrices and embeddings (ndim >= 2) decayed and the rest not (`matrices`)."""
    params = list(model.parameters())
    if Decay(cfg.decay) is Decay.all:
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


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


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig,
                    max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule `lr_factor` as a scheduler of every parameter group (weight decay scales with it)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, max_steps))
