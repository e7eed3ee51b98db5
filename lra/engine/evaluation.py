"""Predictions of a model over a split, and the metrics a record reports of them (lra.predictions,
and the mean cross-entropy), summed over the processes of a distributed run."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Subset

from lra import distributed
from lra.config import Precision
from lra.engine.device import autocast, to_device
from lra.engine.inputs import loader_options
from lra.engine.step import micro_batch
from lra.predictions import class_counts, split_metrics
from tasks import task_config
from tasks.batching import SequenceDataset


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: SequenceDataset, cfg: DictConfig, device: torch.device,
            limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Predicted and true labels of this process's share of `dataset` (of its first `limit`
    examples, when given), and the sum of their cross-entropies; the examples dealt out over the
    processes, in micro-batches (what a training step's forward pass holds)."""
    model.eval()
    size = len(dataset) if limit is None else min(len(dataset), limit)
    shard = Subset(dataset, range(distributed.rank(), size, distributed.world_size()))
    loader = DataLoader(shard, batch_size=micro_batch(cfg), **loader_options(cfg, device))
    predicted, true = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)]  # a share may be empty
    loss = 0.0
    for batch in loader:
        tokens, mask, labels = to_device(batch, device)  # mask None: no padding
        with autocast(device, Precision(cfg.hardware.precision)):
            logits = model(tokens, mask)
        loss += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        predicted.append(logits.argmax(-1).cpu())
        true.append(batch[2])
    return torch.cat(predicted), torch.cat(true), loss


def validation_limit(cfg: DictConfig) -> int | None:
    """The examples a periodic validation scores: the first trainer.eval_batches batches, or all."""
    batches = cfg.trainer.eval_batches
    return None if batches is None else batches * cfg.trainer.batch_size


def evaluate(model: torch.nn.Module, dataset: SequenceDataset, cfg: DictConfig, device: torch.device,
             split: str, limit: int | None = None) -> dict[str, Any]:
    """The `lra.predictions` metrics of `split` on `dataset` (its first `limit` examples, when
    given; else all of it), over every process's share."""
    return scored(split, *predict(model, dataset, cfg, device, limit), cfg, device)


def scored(split: str, predicted: torch.Tensor, labels: torch.Tensor, loss: float, cfg: DictConfig,
           device: torch.device) -> dict[str, Any]:
    """The `lra.predictions` metrics of this process's `predicted` and true `labels` and every
    other process's, and `<split>_loss`: the mean of the cross-entropies summed in `loss`."""
    classes = task_config(cfg.task).num_classes
    loss, *counts = distributed.all_sum([loss, int((predicted == labels).sum()), *class_counts(predicted, classes),
                                         *class_counts(labels, classes)], device)
    counts = [int(count) for count in counts]
    metrics = split_metrics(split, counts[0], counts[1:classes + 1], counts[classes + 1:])
    return {**metrics, f"{split}_loss": loss / metrics[f"{split}_examples"]}
