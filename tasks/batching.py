"""Datasets of token sequences, the split of a validation set off a training set, padding, and a
data order that is a pure function of (seed, step).

Because the order of training batches depends only on the seed and the step number, a run
resumed from a checkpoint at step s sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lra.errors import LRAError


@dataclass(frozen=True)
class Ragged:
    """Sequences stored end to end: sequence i is values[offsets[i]:offsets[i + 1]].

    One flat array (of a small dtype, possibly memory-mapped from the cache) rather than a Python
    list of tensors: a split of 100k+ sequences then costs its bytes, not 100k+ objects.
    """

    values: np.ndarray  # token ids
    offsets: np.ndarray  # int64, one more than there are sequences

    @classmethod
    def build(cls, sequences: Iterable[np.ndarray], dtype: type = np.uint8) -> Ragged:
        parts = [np.asarray(seq, dtype=dtype) for seq in sequences]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(part) for part in parts], out=offsets[1:])
        return cls(np.concatenate(parts) if parts else np.zeros(0, dtype), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.values[self.offsets[index] : self.offsets[index + 1]].astype(np.int64))

    def take(self, indices: np.ndarray) -> Ragged:
        """The sequences at `indices`, in that order, stored end to end anew."""
        sequences = (self.values[self.offsets[i] : self.offsets[i + 1]] for i in indices)
        return Ragged.build(sequences, self.values.dtype.type)


class SequenceDataset(Dataset):
    """Token-id sequences with one class label each; one sequence per tower (a two-tower task,
    retrieval, has two per example)."""

    def __init__(self, towers: tuple[Ragged, ...], labels: np.ndarray) -> None:
        if any(len(tower) != len(labels) for tower in towers):
            raise ValueError(f"towers of {[len(t) for t in towers]} sequences for {len(labels)} labels")
        self.towers = towers
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, ...], int]:
        return tuple(tower[index] for tower in self.towers), int(self.labels[index])

    def take(self, indices: np.ndarray) -> SequenceDataset:
        """The examples at `indices`, in that order."""
        return SequenceDataset(tuple(tower.take(indices) for tower in self.towers), self.labels[indices])


def split_off(dataset: SequenceDataset, fraction: float,
              seed: int | None = None) -> tuple[SequenceDataset, SequenceDataset]:
    """(kept, held out): `fraction` of the examples set apart, for validation.

    seed None: the last `fraction`, in order (LRA's image split, train[90%:]). A seed: a random
    subset, for a file in an order of its own (IMDb's is sorted by label), held out in the order
    drawn, so that its first examples (what `trainer.eval_batches` validates on) are a random sample
    too; the rest keep their order. Drawn by numpy's legacy RandomState, whose stream numpy keeps
    fixed (NEP 19): the same split on every machine and numpy version.
    """
    size = len(dataset)
    held = round(size * fraction)
    if seed is None:
        order = np.arange(size)
    else:
        order = np.random.RandomState(seed).permutation(size)
        order = np.concatenate([np.sort(order[held:]), order[:held]])
    return dataset.take(order[: size - held]), dataset.take(order[size - held :])


@dataclass
class TaskData:
    """The three splits of a task."""

    train: SequenceDataset
    val: SequenceDataset
    test: SequenceDataset

    @property
    def towers(self) -> int:
        """Sequences per example: 1, or 2 for a two-tower (matching) task."""
        return len(self.train.towers)


def padded_length(longest: int, multiple: int = 1, limit: int | None = None) -> int:
    """`longest` rounded up to a multiple of `multiple`, but not past `limit` (nor below `longest`)."""
    rounded = -(-longest // multiple) * multiple
    return rounded if limit is None else max(longest, min(rounded, limit))


def pad_batch(
    items: list[tuple[tuple[torch.Tensor, ...], int]], multiple: int = 1, limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Pad to the longest sequence: (tokens, mask with True at real tokens, labels).

    tokens and mask are (batch, length) for one tower, (batch, towers, length) for more. The mask
    is None when every sequence fills the padded length: decided here, on the host, so that the
    model never reads a mask back from the device to find out (and runs unmasked kernels then).
    The length is rounded up to a multiple of `multiple`, at most `limit` (the task's max_len), so
    that batches come in few lengths: a compiled model compiles a graph for each length it sees.
    """
    towers = len(items[0][0])
    lengths = [[len(seq) for seq in seqs] for seqs, _ in items]
    length = padded_length(max(max(row) for row in lengths), multiple, limit)
    tokens = torch.zeros(len(items), towers, length, dtype=torch.long)
    for row, (seqs, _) in enumerate(items):
        for tower, seq in enumerate(seqs):
            tokens[row, tower, : len(seq)] = seq
    padded = any(size < length for row in lengths for size in row)
    mask = torch.arange(length) < torch.tensor(lengths)[..., None] if padded else None
    labels = torch.tensor([label for _, label in items])
    if towers == 1:
        return tokens[:, 0], None if mask is None else mask[:, 0], labels
    return tokens, mask, labels


class StepBatches(Sampler[list[int]]):
    """Training batches for steps [start, stop): a fresh seeded permutation each epoch, last partial batch dropped.

    With `shards` > 1 (data-parallel ranks) each step's batch is dealt out and this sampler yields
    shard `shard` of it: the ranks together see exactly the batch one process would.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start: int, stop: int, shard: int = 0,
                 shards: int = 1) -> None:
        if batch_size > size:
            raise LRAError(f"trainer.batch_size: {batch_size} exceeds the {size} training examples")
        if batch_size % shards:
            raise LRAError(f"trainer.batch_size: {batch_size} does not split evenly over {shards} processes")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.stop = start, stop
        self.shard, self.shards = shard, shards
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
            yield order[offset : offset + self.batch_size][self.shard :: self.shards].tolist()
