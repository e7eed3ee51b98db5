"""Datasets of token sequences, padding, and a data order that is a pure function of (seed, step).

Because the order of training batches depends only on the seed and the step number, a run
resumed from a checkpoint at step s sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler

from lra.errors import LRAError


class SequenceDataset(Dataset):
    """Variable-length token-id sequences with one class label each."""

    def __init__(self, sequences: list[torch.Tensor], labels: torch.Tensor) -> None:
        self.sequences = sequences
        self.labels = labels

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.sequences[index], int(self.labels[index])

    def majority_rate(self) -> float:
        """Accuracy of always predicting the most frequent label (the floor a model must beat)."""
        return float(torch.bincount(self.labels).max()) / len(self.labels)


@dataclass
class TaskData:
    """The three splits of a task and the vocabulary size its model embeds."""

    train: SequenceDataset
    val: SequenceDataset
    test: SequenceDataset
    vocab_size: int


def pad_batch(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence: (tokens, mask with True at real tokens, labels)."""
    lengths = torch.tensor([len(seq) for seq, _ in items])
    tokens = torch.zeros(len(items), int(lengths.max()), dtype=torch.long)
    for row, (seq, _) in enumerate(items):
        tokens[row, : len(seq)] = seq
    mask = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return tokens, mask, torch.tensor([label for _, label in items])


class StepBatches(Sampler[list[int]]):
    """Training batches for steps [start, stop): a fresh seeded permutation each epoch, last partial batch dropped."""

    def __init__(self, size: int, batch_size: int, seed: int, start: int, stop: int) -> None:
        if batch_size > size:
            raise LRAError(f"trainer.batch_size: {batch_size} exceeds the {size} training examples")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.stop = start, stop
        self.per_epoch = size // batch_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, order = None, None
        for step in range(self.start, self.stop):
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            offset = (step % self.per_epoch) * self.batch_size
            yield order[offset : offset + self.batch_size].tolist()
