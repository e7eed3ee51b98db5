"""Associative recall: a synthetic long-range task, drawn in memory from a seed, whose difficulty is
set by its length and by how much it must remember (conf/task/recall.yaml says why).

Each sequence is `max_len` tokens: first a query token naming a key, then filler tokens among which
`pairs` key-value tokens (one token each: key k with value v, the keys distinct) lie at random
positions, none nearer the query than `gap` tokens; the label is the asked key's value. Classes
are balanced: every value is drawn uniformly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lra.config import SEED, TaskConfig, at_least
from lra.errors import LRAError
from tasks import register_task
from tasks.batching import Ragged, SequenceDataset, TaskData

PAD, FILLER = 0, 1
FIRST_PAIR = 2  # pair token of key k and value v: FIRST_PAIR + k * values + v; then one query token per key


@dataclass
class RecallExamples:
    """How many sequences each split has."""

    train: int = field(default=20000, metadata=at_least(1))
    val: int = field(default=1000, metadata=at_least(1))
    test: int = field(default=2000, metadata=at_least(1))


@dataclass
class RecallConfig(TaskConfig):
    name: str = "recall"
    num_classes: int = 8   # values: the classes
    max_len: int = 256     # tokens per sequence, the query included
    pairs: int = field(default=16, metadata=at_least(1))  # key-value pairs per sequence
    # no pair is nearer the query (the first token) than this many tokens
    gap: int = field(default=64, metadata=at_least(1))
    keys: int = field(default=32, metadata=at_least(1))  # the keys pairs draw from (distinct within a sequence)
    seed: int = field(default=0, metadata=SEED)
    examples: RecallExamples = field(default_factory=RecallExamples)

    @property
    def vocab_size(self) -> int:  # pad, filler, a token per (key, value) and a query token per key
        return FIRST_PAIR + self.keys * self.num_classes + self.keys

    def check(self) -> None:
        """The ranges of the task's keys, and keys with which sequences can be drawn."""
        super().check()
        if self.keys < self.pairs:
            raise LRAError(f"task.keys: {self.pairs} distinct keys per sequence (task.pairs) need as many keys, "
                           f"got {self.keys}")
        if self.max_len < self.gap + self.pairs:
            raise LRAError(f"task.max_len: a query, a gap of {self.gap} (task.gap) and {self.pairs} pairs need "
                           f"{self.gap + self.pairs} tokens, got {self.max_len}")


def draw(config: RecallConfig, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` sequences (count x max_len token ids) and their labels."""
    length, pairs = config.max_len, config.pairs
    keys = np.argsort(rng.random((count, config.keys)), axis=1)[:, :pairs]  # distinct keys per sequence
    values = rng.integers(0, config.num_classes, (count, pairs))
    slots = config.gap + np.argsort(rng.random((count, length - config.gap)), axis=1)[:, :pairs]  # pair positions
    asked = rng.integers(0, pairs, count)
    rows = np.arange(count)
    tokens = np.full((count, length), FILLER, dtype=np.int64)
    tokens[rows[:, None], slots] = FIRST_PAIR + keys * config.num_classes + values
    tokens[:, 0] = FIRST_PAIR + config.keys * config.num_classes + keys[rows, asked]
    return tokens, values[rows, asked]


def dtype_for(vocab_size: int) -> type:
    return np.uint8 if vocab_size <= 256 else np.uint16


@register_task(RecallConfig)
def load(config: RecallConfig, root: object, generate: bool, progress: bool) -> TaskData:
    """The three splits, drawn from config.seed (nothing is read or written: `root`, `generate` and
    `progress` are unused, drawing takes seconds)."""
    config.check()
    rng = np.random.default_rng(config.seed)
    splits = {}
    for split in ("train", "val", "test"):
        tokens, labels = draw(config, getattr(config.examples, split), rng)
        splits[split] = SequenceDataset((Ragged.build(tokens, dtype_for(config.vocab_size)),), labels)
    return TaskData(**splits)
