"""Tokenised splits cached as memory-mapped arrays, keyed by source and settings.

A task builds its splits once (reading, decoding and tokenising the source files can take
minutes); later runs map the arrays from <data.root>/.cache/<task>-<hash of the key>/ and start
training at once. The key holds every setting that changes the arrays and a fingerprint (path,
size, modification time) of each source file, so a changed setting or a replaced file makes a new
entry, never a stale read. An entry is written under a temporary name and renamed into place
whole, so a crash leaves no half-written entry, and parallel jobs that build the same entry keep
whichever lands first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tasks.batching import Ragged, SequenceDataset

CACHE_DIR = ".cache"
KEY_FILE = "key.json"


def fingerprint(paths: Iterable[Path]) -> list[list[Any]]:
    """(absolute path, size, mtime in ns) of each file: what the cache key knows of the sources."""
    return [[str(path.resolve()), (stat := path.stat()).st_size, stat.st_mtime_ns] for path in paths]


def _save(directory: Path, splits: dict[str, SequenceDataset], key: dict[str, Any]) -> None:
    for split, dataset in splits.items():
        np.save(directory / f"{split}.labels.npy", dataset.labels)
        for tower, ragged in enumerate(dataset.towers):
            np.save(directory / f"{split}.{tower}.values.npy", ragged.values)
            np.save(directory / f"{split}.{tower}.offsets.npy", ragged.offsets)
    contents = {"key": key, "towers": {split: len(dataset.towers) for split, dataset in splits.items()}}
    (directory / KEY_FILE).write_text(json.dumps(contents, indent=1, sort_keys=True) + "\n")


def _load(directory: Path) -> dict[str, SequenceDataset]:
    towers = json.loads((directory / KEY_FILE).read_text())["towers"]

    def array(name: str) -> np.ndarray:
        return np.load(directory / name, mmap_mode="r")

    return {
        split: SequenceDataset(
            tuple(Ragged(array(f"{split}.{t}.values.npy"), array(f"{split}.{t}.offsets.npy")) for t in range(count)),
            np.asarray(array(f"{split}.labels.npy")),
        )
        for split, count in towers.items()
    }


def cached_splits(
    root: Path, task: str, key: dict[str, Any], build: Callable[[], dict[str, SequenceDataset]]
) -> dict[str, SequenceDataset]:
    """The splits `build` makes for `key`, from the cache when an entry for the key exists."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    directory = Path(root) / CACHE_DIR / f"{task}-{digest}"
    if not (directory / KEY_FILE).exists():
        splits = build()
        temp = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
        temp.mkdir(parents=True, exist_ok=True)
        try:
            _save(temp, splits, key)
            os.replace(temp, directory)
        except OSError:
            if not (directory / KEY_FILE).exists():  # not a parallel job's entry landing first
                raise
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    return _load(directory)
