"""Tokenised splits cached as datasets Arrow files, memory-mapped, under a fingerprint of what made them.

A task builds its splits once (reading, decoding and tokenising the source files can take
minutes); later runs map <data.root>/.cache/<task>-<fingerprint>/<split>.arrow and start training at
once. A split is one Arrow table, written by datasets' ArrowWriter (the writer of `Dataset.map`'s
cache files; `datasets.Dataset.from_file` opens one): a large_list column of token ids per tower,
then the labels, in a single record batch. A tower's token ids and offsets are then two flat
buffers of the mapped file, which numpy views in place: a cached load copies and decodes nothing,
and does not import datasets.

Where data.root is not writable (a read-only release), the entries go under its stand-in in the
user's cache instead, and where that is not writable either, nowhere: each load builds the splits
in memory (lra.files.data_home).

The fingerprint holds every setting that changes the arrays and a fingerprint (path, size,
modification time) of each source file, so a changed setting or a replaced file makes a new entry,
never a stale read. It holds the code's version too. datasets' own fingerprint of a function
(`datasets.fingerprint.Hasher`) pickles a function of an importable module by its name, so it sees
no change to that function's code, nor to the code it calls; the version is instead a hash of the
source of the module that defines `build` (the task module, with its tokeniser), of every module of
this package it draws on, at any depth (retrieval tokenises with text's code), and of the modules
that store and read the arrays (cache, batching, sources). A changed tokeniser or array format
makes a new entry; unchanged code hits the old one, whatever else changed in the checkout. An entry
is written under a temporary name and renamed into place whole, so a crash leaves no half-written
entry, and parallel jobs that build the same entry keep whichever lands first; the temporaries of
builds that were killed are removed when the cache is next opened. An entry found damaged later (a
file truncated, overwritten or gone: each split is checked against the rows written, cheaply) is
built again, with a warning naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa

from lra.errors import one_line
from lra.files import data_home, naming, remove_stale_temporaries, temporary_name, user_cache
from tasks.batching import Ragged, SequenceDataset

CACHE_DIR = ".cache"
SUFFIX = ".arrow"
LABELS = "label"
PACKAGE = "tasks"  # the modules whose code can make the arrays
STORAGE = ("tasks.cache", "tasks.batching", "tasks.sources")  # the modules that write and read them
ROWS = "rows.json"  # in an entry: the rows of each split, as written
log = logging.getLogger("tasks.cache")


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


def _table(dataset: SequenceDataset) -> pa.Table:
    """One split as an Arrow table, its arrays taken as they are: tower_0, tower_1, ... then the labels."""
    towers = {f"tower_{i}": pa.LargeListArray.from_arrays(ragged.offsets, ragged.values)
              for i, ragged in enumerate(dataset.towers)}
    return pa.table({**towers, LABELS: pa.array(dataset.labels, type=pa.int64())})


def _write(path: Path, table: pa.Table, fingerprint: str) -> None:
    """Write a table as datasets writes its cache files, in one record batch (one flat buffer per array)."""
    from datasets.arrow_writer import ArrowWriter  # noqa: PLC0415  (only a cache miss needs datasets)

    with naming(path), ArrowWriter(path=str(path), fingerprint=fingerprint,
                                   writer_batch_size=max(table.num_rows, 1)) as writer:
        writer.write_table(table)
        writer.finalize()


def _flat(column: pa.ChunkedArray) -> pa.Array:
    """The column's one chunk (a table with no rows has none)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _ragged(column: pa.ChunkedArray) -> Ragged:
    """A tower's sequences as numpy views of the column's token-id and offset buffers."""
    lists = _flat(column)
    return Ragged(lists.values.to_numpy(), lists.offsets.to_numpy())


def _read(path: Path, rows: int) -> SequenceDataset:
    """A split from its memory-mapped Arrow file, nothing copied; ValueError (pyarrow's ArrowInvalid is
    one) or OSError unless the file holds the whole split: `rows` rows of token-id lists, then labels."""
    table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
    *towers, labels = table.schema
    if labels.name != LABELS or not all(pa.types.is_large_list(tower.type) for tower in towers):
        raise ValueError(f"{path.name}: columns {', '.join(table.column_names)}, not token-id lists and labels")
    if table.num_rows != rows:
        raise ValueError(f"{path.name}: {table.num_rows} of the {rows} rows written")
    table.validate()  # the buffers' sizes against the lengths: no scan of the data
    return SequenceDataset(tuple(_ragged(table.column(tower.name)) for tower in towers),
                           _flat(table.column(LABELS)).to_numpy())


def _open(directory: Path) -> dict[str, SequenceDataset]:
    """The splits of the entry `directory`, each checked against the rows written (see `_read`)."""
    rows = json.loads((directory / ROWS).read_text())
    if not isinstance(rows, dict) or not all(isinstance(count, int) for count in rows.values()):
        raise ValueError(f"{ROWS}: not the rows of each split")
    return {split: _read(directory / f"{split}{SUFFIX}", count) for split, count in rows.items()}


def _cached(directory: Path) -> dict[str, SequenceDataset] | None:
    """The splits of the entry `directory`; None to build them: when there is no entry, or when it is
    damaged, which is then removed, with a warning naming it."""
    if not directory.is_dir():
        return None
    try:
        return _open(directory)
    except (OSError, ValueError, pa.ArrowException) as error:  # truncated, overwritten, a file gone
        log.warning("cache entry %s is damaged (%s); building it again", directory, one_line(str(error)))
    _discard(directory)
    return None


def _discard(directory: Path) -> None:
    """Remove a damaged entry, renamed out of the way first, so that no reader meets it half removed."""
    damaged = directory.with_name(temporary_name(directory.name, "damaged"))
    shutil.rmtree(damaged, ignore_errors=True)  # left by a killed process that had this process id
    try:
        os.replace(directory, damaged)
    except FileNotFoundError:  # a parallel job moved it first
        return
    shutil.rmtree(damaged, ignore_errors=True)


def _store(directory: Path, splits: dict[str, SequenceDataset], digest: str) -> None:
    """Write the entry `directory` under a temporary name, then rename it into place whole; an entry
    of a parallel job that lands first is kept."""
    temp = directory.with_name(temporary_name(directory.name))
    temp.mkdir(parents=True, exist_ok=True)
    try:
        for split, dataset in splits.items():
            _write(temp / f"{split}{SUFFIX}", _table(dataset), digest)
        (temp / ROWS).write_text(json.dumps({split: len(dataset) for split, dataset in splits.items()}))
        os.replace(temp, directory)
    except OSError:
        if not directory.is_dir():  # not a parallel job's entry landing first
            raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def cached_splits(
    root: Path, task: str, key: dict[str, Any], build: Callable[[], dict[str, SequenceDataset]]
) -> dict[str, SequenceDataset]:
    """The splits `build` makes for `key`, from the cache when an entry for the key and the code's
    version exists; built afresh, and not cached, where neither data.root nor its stand-in is writable."""
    home = data_home(Path(root))
    if home is None:
        log.warning("%s: not writable, nor is %s: %s splits built in memory, not cached", root, user_cache(), task)
        return build()
    entry = {"settings": key, "code": code_version(build)}
    digest = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]
    directory = home / CACHE_DIR / f"{task}-{digest}"
    remove_stale_temporaries(directory.parent)  # of builds that were killed
    splits = _cached(directory)
    if splits is None:
        _store(directory, build(), digest)
        splits = _open(directory)  # mapped, as a later run's
    return splits
