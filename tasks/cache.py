"""Tokenised splits cached as memory-mapped arrays, keyed by source and settings.

A task builds its splits once (reading, decoding and tokenising the source files can take
minutes); later runs map the arrays from <data.root>/.cache/<task>-<hash of the key>/ and start
training at once. The key holds every setting that changes the arrays and a fingerprint (path,
size, modification time) of each source file, so a changed setting or a replaced file makes a new
entry, never a stale read. The key holds the code's version too: a hash of the source of the
module that defines `build` (the task module, with its tokeniser), of every module of this package
it draws on, at any depth (retrieval tokenises with text's code), and of the modules that store and
read the arrays (cache, batching, sources). A changed tokeniser or array format makes a new entry;
unchanged code hits the old one, whatever else changed in the checkout. An entry is written under a
temporary name and renamed into place whole, so a crash leaves no half-written entry, and parallel
jobs that build the same entry keep whichever lands first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from tasks.batching import Ragged, SequenceDataset

CACHE_DIR = ".cache"
KEY_FILE = "key.json"
PACKAGE = "tasks"  # the modules whose code can make the arrays
STORAGE = ("tasks.cache", "tasks.batching", "tasks.sources")  # the modules that write and read them


def fingerprint(paths: Iterable[Path]) -> list[list[Any]]:
    """(absolute path, size, mtime in ns) of each file: what the cache key knows of the sources."""
    return [[str(path.resolve()), (stat := path.stat()).st_size, stat.st_mtime_ns] for path in paths]


def _drawn_on(module: ModuleType) -> set[ModuleType]:
    """`module` and the modules of this package whose functions, classes or submodules it holds,
    and theirs in turn."""
    found, todo = {module}, [module]
    while todo:
        for value in vars(todo.pop()).values():
            name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
            other = sys.modules.get(name) if isinstance(name, str) and name.startswith(f"{PACKAGE}.") else None
            if other is not None and other not in found:
                found.add(other)
                todo.append(other)
    return found


def code_version(build: Callable[..., Any]) -> str:
    """A hash of the source of the code that makes and stores the arrays `build` returns (see the
    module docstring): it changes whenever the source of that code does."""
    modules = _drawn_on(sys.modules[build.__module__]) | {sys.modules[name] for name in STORAGE}
    digest = hashlib.sha256()
    for module in sorted(modules, key=lambda m: m.__name__):
        digest.update(f"{module.__name__}\0".encode())
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


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
    """The splits `build` makes for `key`, from the cache when an entry for the key and the code's
    version exists."""
    entry = {"settings": key, "code": code_version(build)}
    digest = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]
    directory = Path(root) / CACHE_DIR / f"{task}-{digest}"
    if not (directory / KEY_FILE).exists():
        splits = build()
        temp = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
        temp.mkdir(parents=True, exist_ok=True)
        try:
            _save(temp, splits, entry)
            os.replace(temp, directory)
        except OSError:
            if not (directory / KEY_FILE).exists():  # not a parallel job's entry landing first
                raise
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    return _load(directory)
