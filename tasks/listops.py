"""ListOps as in the Long Range Arena: a seeded generator of the release files and their reader.

The generator follows LRA's (google-research/long-range-arena, lra_benchmarks/data/listops.py):
same tree distribution, written form, length limits and values. It draws from its own
`random.Random(seed)` and keeps examples in first-seen order, so a seed names one dataset byte for
byte. The reader (datasets' csv loader, through tasks/sources.py) takes generated files and those
of the LRA release alike; `parse` and `evaluate` read one written expression back, so that
`check_split` can check a file's labels.
"""

from __future__ import annotations

import csv
import json
import os
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import filterfalse
from pathlib import Path
from typing import TextIO, TypeVar, Union

import numpy as np
from tqdm import tqdm

from lra.config import SEED, TaskConfig, at_least, check_values
from lra.errors import LRAError
from lra.files import remove_stale_temporaries, temporary_name
from tasks import register_task
from tasks.batching import Ragged, SequenceDataset, TaskData
from tasks.cache import cached_splits, fingerprint
from tasks.sources import check_generated, excerpt, generate_command, missing_data, tsv_rows

OPERATORS: tuple[str, ...] = ("[MIN", "[MAX", "[MED", "[SM")
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
END = "]"
VOCAB: tuple[str, ...] = ("<pad>", END, *OPERATORS, *DIGITS)
SPLITS = ("train", "val", "test")
SPLIT_FILES: dict[str, str] = {split: f"basic_{split}.tsv" for split in SPLITS}
SETTINGS_FILE = "generator.json"
HEADER = ("Source", "Target")


@dataclass
class ListOpsSettings:
    """Generator settings; the defaults are those of LRA's generator flags (LRA drew unseeded). Each
    field's `help` metadata is its `lra-data listops` option's help; its range, that of its option
    and of its key under task.generate (every split needs a row: the reader rejects a file without one)."""

    train: int = field(default=96000, metadata={"help": "training examples"} | at_least(1))
    val: int = field(default=2000, metadata={"help": "validation examples"} | at_least(1))
    test: int = field(default=2000, metadata={"help": "test examples"} | at_least(1))
    # lengths count tokens without parentheses, strictly between min_len and max_len
    min_len: int = field(default=500,
                         metadata={"help": "lengths (tokens without parentheses) are > min-len"} | at_least(0))
    max_len: int = field(default=2000, metadata={"help": "lengths are < max-len (at least min-len + 2)"} | at_least(2))
    max_depth: int = field(default=10, metadata={"help": "deepest nesting of operators"} | at_least(1))
    max_args: int = field(default=10, metadata={"help": "most arguments of one operator"} | at_least(2))
    seed: int = field(default=0, metadata={"help": "seed of the generator"} | SEED)


# Chance that a node above max_depth is an operator rather than a digit (LRA's VALUE_P).
_OPERATOR_P = 0.25
# A digit, or (operator, children): the children are the operator's arguments in order. The
# generator gives an operator 2..max_args children; `parse` accepts one or more, since every
# operator in _APPLY has a value for a single argument (that argument).
Tree = Union[int, tuple[str, tuple["Tree", ...]]]
_Node = TypeVar("_Node")

_APPLY: dict[str, Callable[[list[int]], int]] = {
    "[MIN": min,
    "[MAX": max,
    "[MED": lambda values: int(statistics.median(values)),  # == int(numpy.median), as LRA
    "[SM": lambda values: sum(values) % 10,
}
_TOKEN_IDS: dict[str, int] = {token: i for i, token in enumerate(VOCAB) if token != "<pad>"}
_PARENS = frozenset("()")
_LABELS: dict[str, int] = {digit: int(digit) for digit in DIGITS}


class _TooLong(Exception):
    """A tree being drawn has reached max_len tokens, so it would be rejected anyway."""


class _Sampler:
    """Draws trees as LRA's generate_tree does, keeping only those with min_len < length < max_len.

    A draw stops as soon as the tree reaches max_len tokens. That only skips work on trees that
    are rejected anyway, so kept trees have LRA's distribution, while one draw never costs more
    than max_len nodes (with a large max_depth, unstopped trees grow without bound).
    """

    def __init__(self, rng: random.Random, *, min_len: int, max_len: int, max_depth: int,
                 max_args: int) -> None:
        self._rng = rng
        self._min_len, self._max_len = min_len, max_len
        self._max_depth, self._max_args = max_depth, max_args
        self._length = 0

    def draw(self) -> Tree | None:
        """One tree from the root (depth 1), or None when its length is outside the limits."""
        self._length = 0
        try:
            tree = self._node(depth=1)
        except _TooLong:
            return None
        return tree if self._length > self._min_len else None

    def _node(self, depth: int) -> Tree:
        rng = self._rng
        r = rng.random() if depth < self._max_depth else 1.0
        if r > _OPERATOR_P:
            self._count(1)
            return rng.randrange(10)
        self._count(2)  # the operator and its closing "]"
        children = []
        for _ in range(rng.randint(2, self._max_args)):
            children.append(self._node(depth + 1))
        return rng.choice(OPERATORS), tuple(children)

    def _count(self, tokens: int) -> None:
        self._length += tokens
        if self._length >= self._max_len:
            raise _TooLong


def _source(tree: Tree) -> str:
    """The tree written as LRA writes it.

    An operator with children c1..cn is the pair nest ((((op, c1), c2) ... cn), "]") and a pair
    is written "( A B )": [MAX of 2 and 9 is `( ( ( [MAX 2 ) 9 ) ] )`.
    """
    if isinstance(tree, int):
        return str(tree)
    op, children = tree
    args = " ) ".join([_source(child) for child in children])
    return f"{'( ' * (len(children) + 1)}{op} {args} ) {END} )"


def _value(tree: Tree) -> int:
    """The label of a tree: MIN, MAX, integer median (MED) or sum mod 10 (SM) of its arguments."""
    if isinstance(tree, int):
        return tree
    op, children = tree
    return _APPLY[op]([_value(child) for child in children])


def _distinct_trees(*, max_len: int, max_depth: int, max_args: int, enough: int) -> np.ndarray:
    """How many distinct trees the generator can draw, by length below max_len, capped at enough.

    Counts are exact below `enough` (a cap only ever feeds counts at or above it), and float64
    keeps them exact and free of overflow.
    """
    leaves = np.zeros(max_len)
    leaves[1] = len(DIGITS)
    trees = leaves  # at depth max_depth every node is a digit
    for _ in range(max_depth - 1):
        args = trees  # argument lists of one tree, by total length
        arg_lists = np.zeros(max_len)
        for _ in range(2, max_args + 1):
            args = np.minimum(np.convolve(args, trees)[:max_len], enough)
            arg_lists += args
        parents = leaves.copy()
        parents[2:] += len(OPERATORS) * arg_lists[:-2]  # operator + "]" + arguments
        parents = np.minimum(parents, enough)
        if np.array_equal(parents, trees):  # deeper limits no longer change lengths below max_len
            break
        trees = parents
    return trees


def check_settings(settings: Mapping[str, int], key: Callable[[str], str] = str) -> None:
    """Reject generator settings (ListOpsSettings' fields) out of their range, or that the generator
    cannot satisfy, where it would otherwise loop forever: LRAError naming each setting as `key(name)`
    (its config key, or its `lra-data listops` option)."""
    check_values(ListOpsSettings, settings, key)
    min_len, max_len, max_depth, max_args = (settings[name] for name in ("min_len", "max_len", "max_depth", "max_args"))
    if max_len < min_len + 2:
        raise LRAError(f"{key('max_len')}={max_len}: must be at least {key('min_len')}={min_len} + 2, "
                       "so that a length lies strictly between them")
    total = sum(settings[split] for split in SPLITS)
    counts = _distinct_trees(max_len=max_len, max_depth=max_depth, max_args=max_args, enough=total)
    available = int(counts[min_len + 1:].sum())
    if available < total:
        raise LRAError(f"only {available} distinct trees have {key('min_len')}={min_len} < length < "
                       f"{key('max_len')}={max_len} with {key('max_depth')}={max_depth}, "
                       f"{key('max_args')}={max_args}; {total} requested ({' + '.join(map(key, SPLITS))})")


def generate_split_rows(*, train: int, val: int, test: int, min_len: int, max_len: int,
                        max_depth: int = 10, max_args: int = 10, seed: int = 0,
                        progress: bool = True) -> dict[str, list[tuple[str, int]]]:
    """Distinct (source, label) examples for each split, drawn from `random.Random(seed)`.

    Examples keep first-seen order and are cut into train, val, test in that order, so splits
    never share an example and one seed always gives the same rows.
    """
    check_settings({"train": train, "val": val, "test": test, "min_len": min_len, "max_len": max_len,
                    "max_depth": max_depth, "max_args": max_args, "seed": seed})
    total = train + val + test
    sampler = _Sampler(random.Random(seed), min_len=min_len, max_len=max_len,
                       max_depth=max_depth, max_args=max_args)
    examples: dict[str, int] = {}  # source -> label, in first-seen order
    with tqdm(total=total, desc="ListOps", unit="example", disable=not progress) as bar:
        while len(examples) < total:
            tree = sampler.draw()
            if tree is None:
                continue
            source = _source(tree)
            if source not in examples:
                examples[source] = _value(tree)
                bar.update()
    rows = list(examples.items())
    return {"train": rows[:train], "val": rows[train:train + val], "test": rows[train + val:]}


def _write_tsv(f: TextIO, rows: Sequence[tuple[str, int]]) -> None:
    """The LRA release format: csv.writer with tabs (CRLF line ends), header Source, Target."""
    writer = csv.writer(f, delimiter="\t")
    writer.writerow(HEADER)
    writer.writerows(rows)


def write_release(out_dir: Path, *, train: int, val: int, test: int, min_len: int, max_len: int,
                  max_depth: int = 10, max_args: int = 10, seed: int = 0,
                  progress: bool = True) -> None:
    """Generates ListOps into out_dir as the LRA release lays it out, plus generator.json.

    generator.json holds the settings, telling generated data from the release and stale data
    from current. Each file is written under a temporary name and renamed into place, the old
    generator.json removed first and the new one renamed last: a failure leaves no partial file
    and generator.json never describes files other than those beside it. What a killed
    generation left there (its writer's temporary files) is removed first.
    """
    settings = {"train": train, "val": val, "test": test, "min_len": min_len, "max_len": max_len,
                "max_depth": max_depth, "max_args": max_args, "seed": seed}
    rows = generate_split_rows(**settings, progress=progress)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    contents: list[tuple[str, Callable[[TextIO], object]]] = [
        (SPLIT_FILES[split], partial(_write_tsv, rows=rows[split])) for split in SPLITS
    ]
    contents.append((SETTINGS_FILE,
                     lambda f: f.write(json.dumps(settings, sort_keys=True, indent=2) + "\n")))
    staged: list[tuple[Path, Path]] = []
    try:
        for name, write in contents:
            temp = out_dir / temporary_name(name)
            staged.append((temp, out_dir / name))
            with temp.open("w", encoding="utf-8", newline="") as f:
                write(f)
        (out_dir / SETTINGS_FILE).unlink(missing_ok=True)
        for temp, final in staged:
            os.replace(temp, final)
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)


def tokenize(source: str) -> list[int]:
    """Token ids (indices into VOCAB) of a source; LRAError names the first unknown token.

    Parentheses are dropped: with "]" closing every operator the prefix form is unambiguous
    without them.
    """
    try:  # map/filterfalse keep the per-token work in C: a whole split has ~10^8 tokens
        return list(map(_TOKEN_IDS.__getitem__, filterfalse(_PARENS.__contains__, source.split())))
    except KeyError as err:
        raise LRAError(f"unknown token {excerpt(err.args[0])}") from None


def _fold(source: str, node: Callable[[str, list[int | _Node]], _Node]) -> int | _Node:
    """The expression of a source folded bottom-up: a digit is its value, an operator with its
    folded arguments becomes node(operator, arguments). LRAError says why the words of the
    source are not one expression, counting words (parentheses too) from 1.

    Parentheses are skipped, as tokenize skips them: "]" alone closes an operator. An explicit
    stack rather than recursion, so that nesting thousands deep costs memory, not the Python
    stack.
    """
    pending: list[tuple[str, int, list[int | _Node]]] = []  # open operators: name, word, arguments
    done: list[int | _Node] = []  # the complete expression, once there is one
    for position, word in enumerate(source.split(), start=1):
        if word in _PARENS:
            continue
        if done and word != END:  # a stray "]" is reported as closing nothing, below
            raise LRAError(f"word {position} ({excerpt(word)}) follows a complete expression")
        if word in _APPLY:
            pending.append((word, position, []))
            continue
        if word == END:
            if not pending:
                raise LRAError(f"']' (word {position}) closes no operator")
            operator, opened, arguments = pending.pop()
            if not arguments:
                raise LRAError(f"{excerpt(operator)} (word {opened}) has no arguments")
            value = node(operator, arguments)
        elif word in _LABELS:
            value = _LABELS[word]
        else:
            raise LRAError(f"unknown token {excerpt(word)}")
        (pending[-1][2] if pending else done).append(value)
    if pending:
        operator, opened, _ = pending[-1]
        raise LRAError(f"{excerpt(operator)} (word {opened}) is not closed by ']'")
    if not done:
        raise LRAError("the source has no tokens")
    return done[0]


def parse(source: str) -> Tree:
    """The tree of a written source (LRA's form, or without parentheses); LRAError with a
    one-line reason when it is not exactly one expression of digits and operators with one
    or more arguments each. The inverse of _source."""
    return _fold(source, lambda operator, children: (operator, tuple(children)))


def evaluate(source: str) -> int:
    """The value of a written source, as _value(parse(source)) but without recursion, so that
    deeply nested sources evaluate too."""
    return _fold(source, lambda operator, values: _APPLY[operator](values))


def _label(field: str) -> int:
    """The class of a Target field; LRAError unless it is one digit."""
    if field not in _LABELS:
        raise LRAError(f"label {excerpt(field)} is not a digit 0-9")
    return _LABELS[field]


def _parse_row(source: str, label: str) -> tuple[list[int], int]:
    """Token ids and label of one row's Source and Target fields; LRAError says what is wrong."""
    value = _label(label)
    ids = tokenize(source)
    if not ids:
        raise LRAError("the source has no tokens")
    return ids, value


def read_split(path: Path, max_len: int) -> SequenceDataset:
    """Token ids (first max_len tokens, as LRA truncated) and labels of one split file.

    Reads the format of the LRA release and of write_release (CRLF or LF line ends); any
    malformed line raises LRAError naming `path:line`. Sources are tokenized, not parsed: the
    model sees the tokens whether or not they form one expression, and parsing would cost a
    Python step per token.
    """
    if max_len < 1:
        raise LRAError(f"max_len must be >= 1, got {max_len}")
    path = Path(path)
    tokens: list[list[int]] = []
    labels: list[int] = []
    for lineno, (source, label) in tsv_rows(path, HEADER, header=True):
        try:
            ids, value = _parse_row(source, label)
        except LRAError as err:
            raise LRAError(f"{path}:{lineno}: {err}") from None
        tokens.append(ids[:max_len])
        labels.append(value)
    if not labels:
        raise LRAError(f"{path}: no examples after the header")
    return SequenceDataset((Ragged.build(tokens),), np.array(labels, dtype=np.int64))


def check_split(path: Path, progress: bool = True) -> int:
    """The number of rows of a split file, once each row's label is checked to be the value of
    its source: LRAError names the first `path:line` whose label is not, or that is malformed.

    Evaluation takes a Python step per token (about a minute for LRA's training split), hence
    the progress bar.
    """
    path = Path(path)
    rows = 0
    for lineno, (source, label) in tqdm(tsv_rows(path, HEADER, header=True), desc=path.name, unit="row",
                                        disable=not progress, leave=False):
        try:
            expected = _label(label)
            value = evaluate(source)
        except LRAError as err:
            raise LRAError(f"{path}:{lineno}: {err}") from None
        if expected != value:
            raise LRAError(f"{path}:{lineno}: label {expected}, but the expression evaluates to {value}")
        rows += 1
    if not rows:
        raise LRAError(f"{path}: no examples after the header")
    return rows


@dataclass
class ListOpsConfig(TaskConfig):
    vocab_size = len(VOCAB)
    min_fill = 0.25  # LRA's generator: 500 < length < 2000 tokens at max_len 2000

    name: str = "listops"
    num_classes: int = 10
    max_len: int = 2000
    dir: str = "listops-1000"
    generate: ListOpsSettings = field(default_factory=ListOpsSettings)

    def check(self) -> None:
        """The ranges of the task's keys, and generator settings the generator can satisfy."""
        super().check()
        check_settings(asdict(self.generate), lambda name: f"task.generate.{name}")


@register_task(ListOpsConfig)
def load(config: ListOpsConfig, root: Path, generate: bool, progress: bool) -> TaskData:
    """The three splits under root/config.dir, generated first when missing and allowed (and what a
    killed generation left there removed)."""
    directory = root / config.dir
    remove_stale_temporaries(directory)
    settings = asdict(config.generate)
    files = [directory / SPLIT_FILES[split] for split in SPLITS]
    if not all(path.exists() for path in files):
        if not generate:
            raise missing_data(
                "ListOps files", f"{', '.join(SPLIT_FILES.values())} in {directory} (data.generate=false)",
                f"run `{generate_command('listops', directory, settings)}`, set data.generate=true, "
                "or point data.root at the unpacked LRA release"
            )
        write_release(directory, **settings, progress=progress)
    check_generated(directory / SETTINGS_FILE, settings)
    key = {"max_len": config.max_len, "files": fingerprint(files)}
    splits = cached_splits(root, "listops", key,
                           lambda: {split: read_split(path, config.max_len) for split, path in zip(SPLITS, files)})
    return TaskData(**splits)
