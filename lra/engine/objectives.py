"""Training objectives: cross-entropy on the labels, or distillation from a teacher's checkpoint.

Distillation (Hinton et al., 2015): the student matches the teacher's class distribution softened
by a temperature T, mixed with the hard labels,

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

(T^2 keeps the soft term's gradients on the scale of the hard term's as T changes). The teacher is
the tested model (best checkpoint or final weights) of a finished lra-train run of the same task
(distill.teacher), typically full attention teaching an efficient variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from lra.engine.finished import trained_config, trained_model, trained_record
from lra.errors import LRAError
from tasks import task_config

# (logits, labels, tokens, mask) -> the mean loss over the batch, and its named terms (detached)
Objective = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
KEY = "distill.teacher"


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor,
                  mask: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return F.cross_entropy(logits.float(), labels), {}


class Distillation:
    """The distillation objective with a frozen teacher, run on the same batch as the student."""

    def __init__(self, teacher: torch.nn.Module, temperature: float, alpha: float) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = temperature
        self.alpha = alpha

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor,
                 mask: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            teacher = self.teacher(tokens, mask).float() / self.temperature
        student = logits.float() / self.temperature
        soft = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True,
                        reduction="batchmean") * self.temperature**2
        hard = F.cross_entropy(logits.float(), labels)
        loss = self.alpha * soft + (1 - self.alpha) * hard
        return loss, {"soft": soft.detach(), "hard": hard.detach()}


def objective(cfg: DictConfig, device: torch.device) -> tuple[Objective, dict[str, Any]]:
    """The run's objective, and what its record says of the teacher (nothing without one)."""
    distill = cfg.distill
    if distill.teacher is None:
        return cross_entropy, {}
    run_dir = Path(distill.teacher)
    record = trained_record(run_dir, KEY)
    teacher_cfg = trained_config(record)
    theirs, ours = task_config(teacher_cfg.task), task_config(cfg.task)
    if (theirs.name, theirs.max_len, theirs.num_classes) != (ours.name, ours.max_len, ours.num_classes):
        raise LRAError(f"{KEY}: {run_dir} was trained on {theirs.name} (max_len {theirs.max_len}), "
                       f"this run is {ours.name} (max_len {ours.max_len})")
    teacher = trained_model(run_dir, teacher_cfg, KEY).to(device)
    about = {"teacher": record["model"], "teacher_run": str(run_dir),
             "teacher_test_accuracy": record["metrics"].get("test_accuracy")}
    return Distillation(teacher, distill.temperature, distill.alpha), about
