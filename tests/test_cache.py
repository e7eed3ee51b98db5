"""The tokenised-data cache (tasks/cache.py): an entry is keyed by the settings and the code that make its
arrays, and holds them as datasets Arrow files."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from datasets import Dataset, LargeList, Value

from tasks import listops, retrieval
from tasks.batching import Ragged, SequenceDataset
from tasks.cache import CACHE_DIR, _drawn_on, cached_splits

NAME = "tokeniser_task"
# A task-like module: its tokeniser is the scale of the token ids; CALLS counts the builds.
SOURCE = '''
import numpy as np

from tasks.batching import Ragged, SequenceDataset

CALLS = []


def build():
    CALLS.append(1)
    tokens = [np.array([1, 2, 3], dtype=np.uint8) * {scale}]
    return {{"train": SequenceDataset((Ragged.build(tokens),), np.array([0]))}}
'''


def write_tokeniser(folder: Path, scale: int) -> None:
    (folder / f"{NAME}.py").write_text(SOURCE.format(scale=scale))


def tokens(root: Path, module: ModuleType, max_len: int = 3) -> list[int]:
    """The train tokens of the one example, through the cache."""
    (values,), _ = cached_splits(root, "toy", {"max_len": max_len}, module.build)["train"][0]
    return values.tolist()


def entries(root: Path) -> int:
    return sum(not path.name.startswith(".") for path in (root / CACHE_DIR).iterdir())


def test_a_changed_tokeniser_builds_a_new_entry_and_unchanged_code_hits_the_old(tmp_path: Path, monkeypatch):
    code, root = tmp_path / "code", tmp_path / "data"
    code.mkdir()
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # every reload compiles the source as written
    write_tokeniser(code, 1)
    module = importlib.import_module(NAME)
    monkeypatch.setitem(sys.modules, NAME, module)  # gone again after the test
    assert tokens(root, module) == [1, 2, 3] and tokens(root, module) == [1, 2, 3]
    assert module.CALLS == [1] and entries(root) == 1  # the second read came from the cache

    write_tokeniser(code, 10)
    module = importlib.reload(module)
    assert tokens(root, module) == [10, 20, 30] and tokens(root, module) == [10, 20, 30]
    assert module.CALLS == [1] and entries(root) == 2

    write_tokeniser(code, 1)  # the first code again: its entry is still the right one
    module = importlib.reload(module)
    assert tokens(root, module) == [1, 2, 3]
    assert module.CALLS == [] and entries(root) == 2


def test_a_changed_setting_builds_a_new_entry_and_the_old_setting_hits_its_own(tmp_path: Path, monkeypatch):
    code, root = tmp_path / "code", tmp_path / "data"
    code.mkdir()
    monkeypatch.syspath_prepend(str(code))
    write_tokeniser(code, 1)
    module = importlib.import_module(NAME)
    monkeypatch.setitem(sys.modules, NAME, module)
    assert tokens(root, module, max_len=3) == tokens(root, module, max_len=4) == [1, 2, 3]
    assert module.CALLS == [1, 1] and entries(root) == 2
    assert tokens(root, module, max_len=3) == [1, 2, 3] and module.CALLS == [1, 1]


def test_an_entry_is_a_datasets_arrow_file_per_split_and_empty_splits_keep(tmp_path: Path):
    pairs = (Ragged.build([np.array([7, 8]), np.array([9])]), Ragged.build([np.array([1]), np.array([], np.uint8)]))
    splits = {"train": SequenceDataset(pairs, np.array([1, 0])),
              "val": SequenceDataset((Ragged.build([]), Ragged.build([])), np.zeros(0, np.int64))}
    cached = cached_splits(tmp_path, "pairs", {}, lambda: splits)
    assert [[t.tolist() for t in towers] + [label] for towers, label in cached["train"]] == [[[7, 8], [1], 1],
                                                                                          [[9], [], 0]]
    assert len(cached["val"]) == 0 and [len(tower) for tower in cached["val"].towers] == [0, 0]
    [entry] = (tmp_path / CACHE_DIR).iterdir()
    train = Dataset.from_file(str(entry / "train.arrow"))
    assert train.features == {"tower_0": LargeList(Value("uint8")), "tower_1": LargeList(Value("uint8")),
                              "label": Value("int64")}
    assert train[:] == {"tower_0": [[7, 8], [9]], "tower_1": [[1], []], "label": [1, 0]}


def test_the_code_version_covers_the_modules_of_the_package_a_task_draws_on():
    assert "tasks.text" in {module.__name__ for module in _drawn_on(retrieval)}  # it tokenises with text's code
    assert {module.__name__ for module in _drawn_on(listops)} == {
        "tasks.listops", "tasks.batching", "tasks.cache", "tasks.sources"}
