"""ListOps generator, release-format reader and the `lra-data listops` command."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from lra.errors import LRAError
from runners.data import cli
from tasks import listops
from tests.task_fixtures import follow_the_missing_data_hint

SMALL = {"train": 300, "val": 50, "test": 50, "min_len": 5, "max_len": 100, "seed": 0}
DEEP = {"train": 60, "val": 10, "test": 10, "min_len": 100, "max_len": 400, "max_depth": 14,
        "max_args": 5, "seed": 3}
FILES = [listops.SPLIT_FILES[split] for split in listops.SPLITS]
PARENS = {"(", ")"}


def reference_value(source: str) -> int:
    """The value of a written source, computed from its "( A B )" pairs as LRA's to_value does.

    Independent of tasks.listops: a pair (op, x) opens an argument list, (list, x) extends it and
    (list, "]") applies the operator; malformed nesting fails an assertion.
    """
    stack: list[list] = []
    result = None
    for token in source.split():
        if token == "(":
            stack.append([])
            continue
        if token != ")":
            stack[-1].append(int(token) if token.isdigit() else token)
            continue
        left, right = stack.pop()  # every pair holds exactly two items
        if isinstance(left, str):
            assert left in {"[MIN", "[MAX", "[MED", "[SM"}, left
            value = (left, [right])
        elif right == "]":
            op, args = left
            value = {"[MIN": min(args), "[MAX": max(args), "[MED": int(np.median(args)),
                     "[SM": sum(args) % 10}[op]
        else:
            value = (left[0], left[1] + [right])
        if stack:
            stack[-1].append(value)
        else:
            assert result is None, "more than one top-level expression"
            result = value
    assert not stack and isinstance(result, int), source
    return result


def read_rows(path: Path) -> list[tuple[str, int]]:
    """The (source, label) rows of a written file, parsed here with plain string splitting."""
    lines = path.read_bytes().decode().split("\r\n")
    assert lines[0] == "Source\tTarget" and lines[-1] == ""
    return [(source, int(label)) for source, label in (line.split("\t") for line in lines[1:-1])]


@pytest.fixture(scope="module", params=[SMALL, DEEP], ids=["small", "deep"])
def release(request, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("listops")
    listops.write_release(out, **request.param, progress=False)
    return out, request.param


def test_labels_agree_with_an_independent_evaluator(release):
    out, _ = release
    for name in FILES:
        for source, label in read_rows(out / name):
            assert reference_value(source) == label, source


def test_lengths_tokens_and_labels(release):
    out, settings = release
    rows = [row for name in FILES for row in read_rows(out / name)]
    known = set(listops.VOCAB[1:]) | PARENS
    for source, _ in rows:
        tokens = source.split()
        assert set(tokens) <= known
        length = sum(token not in PARENS for token in tokens)
        assert settings["min_len"] < length < settings["max_len"]
    labels = Counter(label for _, label in rows)
    assert len(labels) >= 8 and max(labels.values()) < 0.5 * len(rows), labels


def test_splits_have_their_sizes_and_share_nothing(release):
    out, settings = release
    sources = {name: [s for s, _ in read_rows(out / name)] for name in FILES}
    for split, name in listops.SPLIT_FILES.items():
        assert len(sources[name]) == settings[split]
    everything = [s for name in FILES for s in sources[name]]
    assert len(set(everything)) == len(everything)


def test_release_format_and_settings_file(release):
    out, settings = release
    for name in FILES:
        data = (out / name).read_bytes()
        assert data.startswith(b"Source\tTarget\r\n") and data.endswith(b"\r\n")
        lines = data.split(b"\r\n")[:-1]
        assert b"\n" not in data.replace(b"\r\n", b"")
        assert all(line.count(b"\t") == 1 for line in lines)
    expected = {"max_depth": 10, "max_args": 10, **settings}
    assert json.loads((out / listops.SETTINGS_FILE).read_text()) == expected
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, listops.SETTINGS_FILE])


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    small = {**SMALL, "train": 40, "val": 10, "test": 10}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        listops.write_release(tmp_path / name, **{**small, "seed": seed}, progress=False)
    for file in [*FILES, listops.SETTINGS_FILE]:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    for file in FILES:
        assert (tmp_path / "a" / file).read_bytes() != (tmp_path / "c" / file).read_bytes()


def test_generation_leaves_the_global_rng_alone():
    random.seed(1)
    state = random.getstate()
    listops.generate_split_rows(**{**SMALL, "train": 20}, progress=False)
    assert random.getstate() == state


def test_impossible_settings_are_refused_before_generating():
    with pytest.raises(LRAError, match="only 10 distinct trees"):  # length 1: the ten digits
        listops.generate_split_rows(train=9, val=1, test=1, min_len=0, max_len=2, progress=False)
    with pytest.raises(LRAError, match="only 0 distinct trees"):  # depth 2 holds <= 12 tokens
        listops.generate_split_rows(train=1, val=1, test=1, min_len=12, max_len=50, max_depth=2,
                                    progress=False)


def test_read_split_reads_generated_files_with_crlf_and_lf(release, tmp_path):
    out, _ = release
    path = out / listops.SPLIT_FILES["val"]
    rows = read_rows(path)
    split = listops.read_split(path, max_len=10_000)
    assert split.labels.tolist() == [label for _, label in rows]
    for ((ids,), _), (source, _) in zip(split, rows, strict=True):
        assert ids.dtype == torch.int64 and ids.dim() == 1
        assert ids.tolist() == [listops.VOCAB.index(t) for t in source.split() if t not in PARENS]
    lf = tmp_path / "lf.tsv"
    lf.write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
    lf_split = listops.read_split(lf, max_len=10_000)
    assert lf_split.labels.tolist() == split.labels.tolist()
    assert all(torch.equal(a, b) for ((a,), _), ((b,), _) in zip(lf_split, split, strict=True))


def test_read_split_reads_a_release_style_row(tmp_path):
    path = tmp_path / "basic_test.tsv"
    path.write_bytes(b"Source\tTarget\r\n( ( ( [MAX 2 ) 9 ) ] )\t9\r\n[SM 1 ]\t1\r\n")
    split = listops.read_split(path, max_len=2000)
    assert listops.VOCAB[:3] == ("<pad>", "]", "[MIN")
    assert [t.tolist() for (t,), _ in split] == [[3, 8, 15, 1], [5, 7, 1]]  # [MAX 2 9 ], [SM 1 ]
    assert split.labels.tolist() == [9, 1]


def test_read_split_truncates_to_max_len(tmp_path):
    path = tmp_path / "basic_train.tsv"
    path.write_text("Source\tTarget\n( ( ( [MAX 2 ) 9 ) ] )\t9\n5\t5\n")
    split = listops.read_split(path, max_len=2)
    assert [t.tolist() for (t,), _ in split] == [[3, 8], [11]]


@pytest.mark.parametrize(("body", "line", "what"), [
    ("Source\tTarget\r\n[MAX 2 ]\t2\r\n[MAX 2 ]\r\n", 3, "expected 2 tab-separated fields"),
    ("Source\tTarget\r\n[MAX 2 ]\tx\r\n[MAX 2 ]\r\n", 2, "label 'x'"),  # the first bad line, whatever is wrong
    ("Source\tTarget\r\n[MAX 2 ]\t2\t2\r\n", 2, "got 3"),
    ("Source\tTarget\r\n[MAX 2 ]\t12\r\n", 2, "label '12' is not a digit 0-9"),
    ("Source\tTarget\r\n[MAX 2 ]\tx\r\n", 2, "label 'x'"),
    ("Source\tTarget\r\n[MAX 2 ]\t-1\r\n", 2, "label '-1'"),
    ("Source\tTarget\r\n[MAX 2 ]\t2\r\n[FOO 2 ]\t2\r\n", 3, "unknown token '[FOO'"),
    ("Source\tTarget\r\n[MAX 12 ]\t2\r\n", 2, "unknown token '12'"),
    ("Source\tTarget\r\n( )\t2\r\n", 2, "no tokens"),
    ("source\ttarget\r\n[MAX 2 ]\t2\r\n", 1, "expected the header"),
    ("[MAX 2 ]\t2\r\n", 1, "expected the header"),
])
def test_read_split_names_the_bad_line(tmp_path, body, line, what):
    path = tmp_path / "bad.tsv"
    path.write_bytes(body.encode())
    with pytest.raises(LRAError) as error:
        listops.read_split(path, max_len=100)
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: ") and what in message
    assert "\n" not in message


def test_read_split_names_a_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "basic_val.tsv"
    path.write_bytes(b"Source\tTarget\r\n[MAX 2 ]\t2\r\n( [MAX \xff ] )\t2\r\n[MAX 2 ]\r\n")
    with pytest.raises(LRAError) as error:
        listops.read_split(path, max_len=100)
    assert str(error.value) == f"{path}:3: not UTF-8 text"


@pytest.mark.parametrize(("body", "what"), [
    (None, "cannot read"), ("", "empty file"), ("Source\tTarget\r\n", "no examples")])
def test_read_split_rejects_missing_or_empty_files(tmp_path, body, what):
    path = tmp_path / "basic_val.tsv"
    if body is not None:
        path.write_text(body)
    with pytest.raises(LRAError, match=what) as error:
        listops.read_split(path, max_len=100)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_failed_write_leaves_the_previous_release_untouched(tmp_path, monkeypatch):
    listops.write_release(tmp_path, **{**SMALL, "train": 20}, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(listops.json, "dumps", fail)  # after the data files are staged
    with pytest.raises(OSError, match="disk full"):
        listops.write_release(tmp_path, **{**SMALL, "train": 30, "seed": 1}, progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_interrupted_rename_leaves_no_stale_settings_file(tmp_path, monkeypatch):
    listops.write_release(tmp_path, **{**SMALL, "train": 20}, progress=False)
    real_replace, renamed = os.replace, []

    def replace_once(src, dst):
        if renamed:
            raise OSError("interrupted")
        renamed.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(listops.os, "replace", replace_once)
    with pytest.raises(OSError, match="interrupted"):
        listops.write_release(tmp_path, **{**SMALL, "train": 30, "seed": 1}, progress=False)
    # basic_train.tsv is new, the others old: no generator.json may claim to describe them
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)


def test_cli_writes_the_release(tmp_path, capsys):
    out = tmp_path / "listops-1000"
    cli(["listops", "--out", str(out), "--train", "30", "--val", "5", "--test", "5",
         "--min-len", "5", "--max-len", "60", "--seed", "2", "--no-progress"])
    stdout = capsys.readouterr().out
    assert stdout.count("\n") == 1 and str(out) in stdout
    assert json.loads((out / listops.SETTINGS_FILE).read_text())["seed"] == 2
    sizes = [len(listops.read_split(out / name, max_len=60)) for name in FILES]
    assert sizes == [30, 5, 5]


def test_the_missing_data_hint_runs_as_printed_and_the_task_then_loads(tiny_cfg):
    data = follow_the_missing_data_hint(tiny_cfg("data.generate=false", "task.generate.seed=3",
                                                 "task.generate.max_depth=6"))
    assert [len(data.train), len(data.val), len(data.test)] == [400, 64, 64]


@pytest.mark.parametrize("args", [
    ["--min-len", "50", "--max-len", "50"],
    ["--min-len", "50", "--max-len", "51"],
    ["--train", "-1"],
    ["--max-args", "1"],
    ["--max-depth", "0"],
    ["--max-depth", "2", "--min-len", "20"],
    ["--train", "many"],
])
def test_cli_rejects_invalid_settings_in_one_line(tmp_path, capsys, args):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        cli(["listops", "--out", str(out), "--max-len", "100", "--no-progress", *args])
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("lra-data: error: ") and stderr.count("\n") == 1
    assert not out.exists()


def test_module_entry_point_reports_errors():
    done = subprocess.run([sys.executable, "-m", "runners.data", "listops", "--out", "x",
                           "--min-len", "9", "--max-len", "3"],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 2
    assert done.stderr.startswith("lra-data: error: --max-len=3: ") and "--min-len=9" in done.stderr


@pytest.mark.parametrize(("source", "reason"), [
    ("", "the source has no tokens"),
    ("( )", "the source has no tokens"),
    ("( ( [MAX ) ] )", "'[MAX' (word 3) has no arguments"),
    ("( [SM 1 ) ] ) ]", "']' (word 7) closes no operator"),
    ("[MIN [MAX 1 ]", "'[MIN' (word 1) is not closed by ']'"),
    ("1 ( 2 )", "word 3 ('2') follows a complete expression"),
    ("[MAX 1 [FOO ]", "unknown token '[FOO'"),
])
def test_parse_names_what_is_malformed(source, reason):
    for read in (listops.parse, listops.evaluate):
        with pytest.raises(LRAError) as error:
            read(source)
        assert str(error.value) == reason


def test_parse_reads_the_written_form_and_one_argument_operators():
    assert listops.parse("( ( ( [MAX 2 ) 9 ) ] )") == ("[MAX", (2, 9))
    assert listops.parse("[MED 1 [SM 4 ] 8 3 ]") == ("[MED", (1, ("[SM", (4,)), 8, 3))
    assert listops.evaluate("[MED 1 [SM 4 ] 8 3 ]") == 3  # median of 1 4 8 3 is 3.5, truncated
    assert listops.evaluate("7") == 7


def test_deep_nesting_parses_and_evaluates_without_recursion():
    depth = 20 * sys.getrecursionlimit()
    source = "( ( [SM " * depth + "7" + " ) ] )" * depth
    assert listops.evaluate(source) == 7
    tree, levels = listops.parse(source), 0
    while not isinstance(tree, int):
        (op, (tree,)), levels = tree, levels + 1
        assert op == "[SM"
    assert (tree, levels) == (7, depth)
    with pytest.raises(LRAError) as error:
        listops.evaluate(source.removesuffix(" ] )"))  # the outermost operator loses its "]"
    assert str(error.value) == "'[SM' (word 3) is not closed by ']'"


def test_check_split_counts_the_rows_of_a_release(release):
    out, settings = release
    for split, name in listops.SPLIT_FILES.items():
        assert listops.check_split(out / name, progress=False) == settings[split]


def test_cli_check_listops_passes_a_generated_file_and_names_a_wrong_label(release, tmp_path, capsys):
    out, settings = release
    path = out / listops.SPLIT_FILES["val"]
    cli(["check-listops", str(path), "--no-progress"])
    stdout = capsys.readouterr().out
    assert stdout == (f"all {settings['val']} rows of {path} check: "
                      "every label is the value of its expression\n")
    lines = path.read_bytes().split(b"\r\n")
    source, label = lines[3].split(b"\t")
    lines[3] = source + b"\t" + str((int(label) + 1) % 10).encode()
    wrong = tmp_path / "basic_val.tsv"
    wrong.write_bytes(b"\r\n".join(lines))
    with pytest.raises(SystemExit) as exit_:
        cli(["check-listops", str(path), str(wrong), "--no-progress"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (f"lra-data: error: {wrong}:4: label {(int(label) + 1) % 10}, "
                                       f"but the expression evaluates to {int(label)}\n")
