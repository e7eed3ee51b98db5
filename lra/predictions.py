"""What a record says of a model's predictions on a whole split: accuracy, how many examples it
covers, the majority-class rate of the same examples, and whether the model is a degenerate
predictor (one class for nearly every example: the commonest way to sit at chance unnoticed).
"""

from __future__ import annotations

from typing import Any

import torch

DEGENERATE_SHARE = 0.95  # a model giving one class to at least this share of a split is degenerate


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    """How many of `labels` (1-D, long) fall in each of `num_classes` classes."""
    return torch.bincount(labels, minlength=num_classes).tolist()


def split_metrics(split: str, correct: int, predicted: list[int], labels: list[int]) -> dict[str, Any]:
    """`<split>_accuracy`, `<split>_examples`, `<split>_majority_rate` (always answering the most
    frequent true class), `<split>_top_class_share` (the share of examples given the most frequent
    predicted class) and `<split>_degenerate` (that share at least DEGENERATE_SHARE), from the number
    of correct predictions and the per-class counts of predicted and true labels."""
    total = sum(labels)
    if total == 0:
        raise ValueError(f"no {split} examples to score")
    top_share = max(predicted) / total
    return {f"{split}_accuracy": correct / total, f"{split}_examples": total,
            f"{split}_majority_rate": max(labels) / total, f"{split}_top_class_share": top_share,
            f"{split}_degenerate": top_share >= DEGENERATE_SHARE}
