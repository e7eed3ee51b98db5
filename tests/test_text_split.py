"""The text task's validation split: LRA's (the test split) or a seeded random share of the training
reviews, the same in every process and on every machine; and `split_off`, which the image task shares."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from lra.errors import LRAError
from tasks import text
from tasks.batching import Ragged, SequenceDataset, TaskData, split_off
from tasks.cache import CACHE_DIR
from tests.conftest import REPO, compose_config

TRAIN, TEST = 40, 12
# The reviews split_seed 0 holds out of TRAIN at val_fraction 0.25, in the order drawn: numpy's legacy
# RandomState stream, which numpy keeps fixed, so this split holds on every machine and numpy version.
HELD_OUT_SEED_0 = [22, 20, 25, 4, 10, 15, 28, 11, 18, 29]


def write_sorted_imdb(directory: Path) -> None:
    """IMDb's layout, its files in the hub's order: every negative review, then every positive one."""
    (directory / "plain_text").mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", TRAIN), ("test", TEST)):
        frame = pd.DataFrame({"text": [f"{split} {i}" for i in range(rows)],
                              "label": [2 * i // rows for i in range(rows)]})
        frame.to_parquet(directory / "plain_text" / f"{split}-00000-of-00001.parquet")


def load(root: Path, *overrides: str) -> TaskData:
    """The text task's splits under `root`, its config composed as lra-train composes it."""
    config = OmegaConf.to_object(compose_config("task=text", f"data.root={root}", *overrides).task)
    return text.load(config, root, generate=True, progress=False)


def numbers(dataset: SequenceDataset) -> list[int]:
    """The row numbers (in their file) of a split's reviews, in its order; each label checked against its row."""
    rows = []
    for index in range(len(dataset)):
        (tokens,), label = dataset[index]
        split, row = bytes(tokens.tolist()).decode().split()
        rows.append(int(row))
        assert label == 2 * int(row) // (TRAIN if split == "train" else TEST)
    return rows


def unreachable(*args, **kwargs):
    raise AssertionError("the cache should have served this")


def test_the_default_holds_out_a_tenth_of_the_training_reviews():
    assert compose_config("task=text").task.val_fraction == 0.1


def test_null_val_fraction_validates_on_the_test_split(tmp_path: Path):
    write_sorted_imdb(tmp_path / "imdb")
    data = load(tmp_path, "task.val_fraction=null")
    assert data.val is data.test and numbers(data.test) == list(range(TEST))
    assert numbers(data.train) == list(range(TRAIN))


def test_a_fraction_holds_out_a_seeded_random_share_of_the_training_reviews(tmp_path: Path):
    write_sorted_imdb(tmp_path / "imdb")
    data = load(tmp_path, "task.val_fraction=0.25")
    train, val = numbers(data.train), numbers(data.val)
    assert (len(train), len(val)) == (30, 10)
    assert not set(train) & set(val) and sorted(train + val) == list(range(TRAIN))
    assert set(data.val.labels.tolist()) == {0, 1}  # the file is sorted by label: its tail would be all 1
    assert val == HELD_OUT_SEED_0 and train == sorted(train)  # held out in the order drawn; the rest in order
    assert numbers(data.test) == list(range(TEST))


def test_the_split_is_the_same_on_reload_and_in_another_process(tmp_path: Path, monkeypatch):
    write_sorted_imdb(tmp_path / "imdb")
    first = load(tmp_path, "task.val_fraction=0.25")
    monkeypatch.setattr(text, "read_texts", unreachable)
    again = load(tmp_path, "task.val_fraction=0.25")  # from the cache
    monkeypatch.undo()
    assert (numbers(again.train), numbers(again.val)) == (numbers(first.train), numbers(first.val))
    other = tmp_path / "other"  # no cache there: the other process reads and splits the files itself
    write_sorted_imdb(other / "imdb")
    script = ("import json, sys; from pathlib import Path; from tasks import text; "
              "data = text.load(text.TextConfig(val_fraction=0.25), Path(sys.argv[1]), True, False); "
              "print(json.dumps([data.val[i][0][0].tolist() for i in range(len(data.val))]))")
    result = subprocess.run([sys.executable, "-c", script, str(other)], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    theirs = [int(bytes(tokens).decode().split()[1]) for tokens in json.loads(result.stdout.splitlines()[-1])]
    assert theirs == numbers(first.val) == HELD_OUT_SEED_0


def test_the_cache_follows_val_fraction_and_split_seed(tmp_path: Path):
    write_sorted_imdb(tmp_path / "imdb")
    quarter = load(tmp_path, "task.val_fraction=0.25")
    half = load(tmp_path, "task.val_fraction=0.5")
    reseeded = load(tmp_path, "task.val_fraction=0.25", "task.split_seed=1")
    lra = load(tmp_path, "task.val_fraction=null")
    assert [len(data.val) for data in (quarter, half, reseeded)] == [10, 20, 10] and lra.val is lra.test
    assert set(numbers(reseeded.val)) != set(numbers(quarter.val))
    assert len(lra.train) == TRAIN
    entries = [path for path in (tmp_path / CACHE_DIR).iterdir() if not path.name.startswith(".")]
    assert len(entries) == 4


@pytest.mark.parametrize("fraction", ["0", "1", "1.5", "-0.1"])
def test_a_val_fraction_outside_0_and_1_is_an_error_naming_the_key(fraction: str, tmp_path: Path):
    write_sorted_imdb(tmp_path / "imdb")
    with pytest.raises(LRAError, match=rf"^task\.val_fraction={float(fraction)}: must be in \(0, 1\), or null$"):
        load(tmp_path, f"task.val_fraction={fraction}")


# --- split_off, shared with the image task ----------------------------------------------------------


def indexed(size: int) -> SequenceDataset:
    """Two towers whose sequences name their example (example i: i + 1 tokens, then 2 tokens, of value i)."""
    return SequenceDataset((Ragged.build([np.full(i + 1, i) for i in range(size)]),
                            Ragged.build([np.full(2, i) for i in range(size)])), np.arange(size))


def examples(dataset: SequenceDataset) -> list[int]:
    """The examples of a part of `indexed`, in its order, each checked whole (both towers, its label)."""
    for index in range(len(dataset)):
        (first, second), label = dataset[index]
        assert first.tolist() == [label] * (label + 1) and second.tolist() == [label] * 2
    return dataset.labels.tolist()


def test_split_off_without_a_seed_holds_out_the_tail_in_order():
    kept, held = split_off(indexed(10), 0.3)
    assert examples(kept) == list(range(7)) and examples(held) == [7, 8, 9]


def test_split_off_with_a_seed_holds_out_a_random_subset_in_the_order_drawn():
    kept, held = split_off(indexed(10), 0.3, seed=0)
    drawn = np.random.RandomState(0).permutation(10).tolist()
    assert examples(held) == drawn[:3] and examples(kept) == sorted(drawn[3:])
    assert examples(split_off(indexed(10), 0.3, seed=1)[1]) != drawn[:3]
