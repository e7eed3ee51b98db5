"""Byte-level text classification (LRA "Text"): IMDb reviews as UTF-8 bytes, positive or negative.

Source: the Hugging Face dataset stanfordnlp/imdb (parquet, columns text and label), loaded with
datasets from <data.root>/<dir> when the files are there, else from the hub cache, offline
(tasks/sources.py). Validation: `val_fraction` of the training reviews, a seeded random subset
(`split_seed`; the training file is sorted by label, so its tail would be all positive), the same
on every run and machine; or, with `val_fraction: null`, the test split itself, as in LRA, which
had no validation split for IMDb (the best checkpoint is then chosen on the test split).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from lra.config import SEED, TaskConfig, between
from lra.errors import LRAError
from tasks import register_task
from tasks.batching import Ragged, SequenceDataset, TaskData, split_off
from tasks.cache import cached_splits, fingerprint
from tasks.sources import check_labels, read_table, table_sources

BYTES = 256  # the vocabulary: one token per byte value


@dataclass
class TextConfig(TaskConfig):
    vocab_size = BYTES
    min_fill = 0.0  # reviews of a few bytes up: most are shorter than LRA's 4000 bytes, a few are cut at it

    name: str = "text"
    num_classes: int = 2
    max_len: int = 4000
    dir: str = "imdb"
    hub: str = "stanfordnlp/imdb"
    # the share of the training reviews held out for validation; None: the test split validates (LRA)
    val_fraction: Optional[float] = field(default=None, metadata=between(0, 1, low_open=True, high_open=True))
    # draws the held-out reviews: fixed, so every run validates on the same ones
    split_seed: int = field(default=0, metadata=SEED)


def utf8_bytes(text: str, max_len: int) -> np.ndarray:
    """The first max_len UTF-8 bytes of text, as token ids."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)[:max_len]


def read_texts(files: list[Path], num_classes: int, max_len: int, progress: bool) -> SequenceDataset:
    """The byte sequences and labels of one split's table files, in file order."""
    sequences: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for path in files:
        table = read_table(path, ["text", "label"])
        labels.append(check_labels(table["label"], num_classes, path))
        texts = tqdm(table["text"], desc=path.name, unit="doc", disable=not progress, leave=False)
        sequences.extend(utf8_bytes(review(text, path, row), max_len) for row, text in enumerate(texts, start=1))
    return SequenceDataset((Ragged.build(sequences),), np.concatenate(labels))


def review(text: object, path: Path, row: int) -> str:
    """The text of a review (row `row` of `path`); LRAError unless it is a string, which a number or
    bytes in the column would not be (their printed form is no review)."""
    if not isinstance(text, str):
        raise LRAError(f"{path}: row {row}: text is not a string (got {type(text).__name__} {text!r:.40})")
    return text


@register_task(TextConfig)
def load(config: TextConfig, root: Path, generate: bool, progress: bool) -> TaskData:
    config.check()
    files = table_sources(root / config.dir, config.hub, ("train", "test"), what="IMDb reviews (task=text)")
    held_out = None if config.val_fraction is None else {"fraction": config.val_fraction, "seed": config.split_seed}
    key = {"max_len": config.max_len, "num_classes": config.num_classes, "val": held_out,
           "files": {split: fingerprint(paths) for split, paths in files.items()}}

    def build() -> dict[str, SequenceDataset]:
        splits = {split: read_texts(paths, config.num_classes, config.max_len, progress)
                  for split, paths in files.items()}
        if held_out is not None:
            splits["train"], splits["val"] = split_off(splits["train"], held_out["fraction"], held_out["seed"])
        return splits

    splits = cached_splits(root, "text", key, build)
    return TaskData(train=splits["train"], val=splits.get("val", splits["test"]), test=splits["test"])
