"""Byte-level document retrieval (LRA "Retrieval"): do two ACL Anthology papers cite one another?

A two-tower task: each example is two documents, each up to max_len UTF-8 bytes, encoded by the
same encoder; the classifier sees [u, v, u*v, u-v] of their encodings (models/encoder.py).
Source: the LRA release, <data.root>/<dir>/new_aan_pairs.{train,eval,test}.tsv, tab-separated
without a header: label, id1, id2, text1, text2, loaded with datasets' csv loader (tasks/sources.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lra.config import TaskConfig
from lra.errors import LRAError
from tasks import register_task
from tasks.batching import Ragged, SequenceDataset, TaskData
from tasks.cache import cached_splits, fingerprint
from tasks.sources import missing_data, tsv_rows
from tasks.text import BYTES, utf8_bytes

SPLIT_FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}
COLUMNS = ("label", "id1", "id2", "text1", "text2")


@dataclass
class RetrievalConfig(TaskConfig):
    vocab_size = BYTES
    towers = 2
    min_fill = 0.0  # documents of any length, each padded or cut to max_len

    name: str = "retrieval"
    num_classes: int = 2
    max_len: int = 4000  # bytes per document
    dir: str = "tsv_data"


def parse_label(field: str, num_classes: int) -> int:
    """A class id written as an integer or a float ("1", "1.0"); LRAError if it is not one."""
    try:
        value = float(field)
    except ValueError:
        value = float("nan")
    if not (value.is_integer() and 0 <= value < num_classes):
        raise LRAError(f"label {field!r} is not a class 0-{num_classes - 1}")
    return int(value)


def read_pairs(path: Path, num_classes: int, max_len: int, progress: bool) -> SequenceDataset:
    """Both documents and the label of every row of one split file."""
    left: list[np.ndarray] = []
    right: list[np.ndarray] = []
    labels: list[int] = []
    for lineno, fields in tqdm(tsv_rows(path, COLUMNS), desc=path.name, unit="pair", disable=not progress,
                               leave=False):
        try:
            labels.append(parse_label(fields[0], num_classes))
        except LRAError as err:
            raise LRAError(f"{path}:{lineno}: {err}") from None
        left.append(utf8_bytes(fields[3], max_len))
        right.append(utf8_bytes(fields[4], max_len))
    if not labels:
        raise LRAError(f"{path}: no rows")
    return SequenceDataset((Ragged.build(left), Ragged.build(right)), np.array(labels, dtype=np.int64))


@register_task(RetrievalConfig)
def load(config: RetrievalConfig, root: Path, generate: bool, progress: bool) -> TaskData:
    directory = root / config.dir
    files = {split: directory / name for split, name in SPLIT_FILES.items()}
    absent = [path.name for path in files.values() if not path.is_file()]
    if len(absent) == len(files):
        raise missing_data(
            "ACL Anthology pairs (task=retrieval)", f"{', '.join(SPLIT_FILES.values())} in {directory}",
            "download the LRA release (https://storage.googleapis.com/long-range-arena/lra_release.gz), unpack "
            "it and point data.root at its lra_release folder (or task.dir at its tsv_data folder)",
        )
    if absent:
        raise LRAError(f"{directory}: missing split file {', '.join(absent)}")
    key = {"max_len": config.max_len, "num_classes": config.num_classes, "files": fingerprint(files.values())}
    splits = cached_splits(root, "retrieval", key, lambda: {
        split: read_pairs(path, config.num_classes, config.max_len, progress) for split, path in files.items()
    })
    return TaskData(**splits)
