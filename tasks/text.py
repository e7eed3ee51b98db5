"""Byte-level text classification (LRA "Text"): IMDb reviews as UTF-8 bytes, positive or negative.

Source: the Hugging Face dataset stanfordnlp/imdb (parquet, columns text and label), loaded with
datasets from <data.root>/<dir> when the files are there, else from the hub cache, offline
(tasks/sources.py). As in LRA, which had no validation split for IMDb, the test split also serves
for validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lra.config import TaskConfig
from tasks import register_task
from tasks.batching import Ragged, SequenceDataset, TaskData
from tasks.cache import cached_splits, fingerprint
from tasks.sources import check_labels, read_table, table_sources

BYTES = 256  # the vocabulary: one token per byte value


@dataclass
class TextConfig(TaskConfig):
    vocab_size = BYTES

    name: str = "text"
    num_classes: int = 2
    max_len: int = 4000
    dir: str = "imdb"
    hub: str = "stanfordnlp/imdb"


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
        sequences.extend(utf8_bytes(str(text), max_len) for text in texts)
    return SequenceDataset((Ragged.build(sequences),), np.concatenate(labels))


@register_task(TextConfig)
def load(config: TextConfig, root: Path, generate: bool, progress: bool) -> TaskData:
    files = table_sources(root / config.dir, config.hub, ("train", "test"), what="IMDb reviews (task=text)")
    key = {"max_len": config.max_len, "num_classes": config.num_classes,
           "files": {split: fingerprint(paths) for split, paths in files.items()}}
    splits = cached_splits(root, "text", key, lambda: {
        split: read_texts(paths, config.num_classes, config.max_len, progress) for split, paths in files.items()
    })
    return TaskData(train=splits["train"], val=splits["test"], test=splits["test"])
