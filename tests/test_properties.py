"""Properties of the parsers and file readers on arbitrary input (hypothesis): each either returns
a result or raises LRAError with a one-line message that names the file (and line) at fault;
no other exception escapes. And ListOps written by the generator parses back to its tree."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lra.errors import LRAError
from tasks import listops, retrieval, sources, text
from tasks.listops import Tree

# Modest for a 2-core machine, where one example's time varies too much for a deadline.
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
Result = TypeVar("Result")

DIGITS = listops.DIGITS
PARENS = ("(", ")")
KNOWN = frozenset((*listops.VOCAB[1:], *PARENS))
# Words of ListOps, then near misses (wrong case, glued, out of range): near-valid input is common.
WORDS = (*sorted(KNOWN), "[FOO", "[max", "MAX", "[", "10", "-1", "x", "((", "]]")
SEPARATORS = (" ", " ", " ", "  ", "\t", "\n", "\r\n", "\u3000", "")  # "" glues two words into one


def tree_strategy(max_leaves: int) -> st.SearchStrategy[Tree]:
    """ListOps trees of at most max_leaves digits, operators with 1 to 6 arguments."""
    return st.recursive(st.integers(0, 9),
                        lambda children: st.tuples(st.sampled_from(listops.OPERATORS),
                                                   st.lists(children, min_size=1, max_size=6).map(tuple)),
                        max_leaves=max_leaves)


trees = tree_strategy(40)
small_trees = tree_strategy(8)  # rows of a file, whose tests are about lines rather than expressions
word_soup = st.lists(st.tuples(st.sampled_from(sorted(KNOWN)), st.sampled_from(SEPARATORS)), max_size=30).map(
    lambda pairs: "".join(word + separator for word, separator in pairs))
# Text that can be written as UTF-8 (no lone surrogates) without line ends or tabs: one field of one row.
field_text = st.text(st.characters(codec="utf-8", exclude_characters="\t\r\n"), max_size=20)


@st.composite
def edited_sources(draw: st.DrawFn) -> str:
    """A written tree with a few words inserted, deleted or replaced: mostly one edit from valid."""
    words = listops._source(draw(trees)).split()
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(words)))
        edit = draw(st.sampled_from(("insert", "delete", "replace")))
        if edit == "insert":
            words.insert(at, draw(st.sampled_from(WORDS)))
        elif words and at < len(words):
            words[at:at + 1] = [] if edit == "delete" else [draw(st.sampled_from(WORDS))]
    return draw(st.sampled_from(SEPARATORS[:5])).join(words)


listops_text = st.one_of(edited_sources(), word_soup, st.text(max_size=60))


def reference_parse(source: str) -> Tree | None:
    """The tree of a source by plain recursive descent over its words, or None when the words
    (parentheses dropped) are not exactly one expression: an independent oracle for small inputs."""
    words = [word for word in source.split() if word not in PARENS]

    def expression(i: int) -> tuple[Tree, int] | None:
        if i < len(words) and words[i] in DIGITS:
            return int(words[i]), i + 1
        if i >= len(words) or words[i] not in listops.OPERATORS:
            return None
        operator, children, i = words[i], [], i + 1
        while i < len(words) and words[i] != listops.END:
            child = expression(i)
            if child is None:
                return None
            children.append(child[0])
            i = child[1]
        if i == len(words) or not children:
            return None
        return (operator, tuple(children)), i + 1

    parsed = expression(0)
    return parsed[0] if parsed is not None and parsed[1] == len(words) else None


def outcome(call: Callable[[], Result], prefix: str = "") -> Result | LRAError:
    """The result of call(), or the LRAError it raised, after checking that the message is one
    line starting with `prefix`; any other exception fails the test by propagating."""
    try:
        return call()
    except LRAError as error:
        message = str(error)
        assert message.startswith(prefix), message
        assert message and "\n" not in message and "\r" not in message, repr(message)
        return error


@contextmanager
def file_holding(data: bytes, name: str) -> Iterator[Path]:
    """A file named `name` holding data, in a fresh directory removed afterwards (a tmp_path
    fixture would be shared by every example of a hypothesis test)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / name
        path.write_bytes(data)
        yield path


# --- ListOps expressions ----------------------------------------------------------------------


@PROPERTY
@given(trees)
def test_written_trees_parse_back_and_evaluate_to_their_value(tree):
    source = listops._source(tree)
    assert listops.parse(source) == tree
    assert listops.evaluate(source) == listops._value(tree)
    assert listops.parse(" ".join(w for w in source.split() if w not in PARENS)) == tree  # parentheses are optional


@PROPERTY
@example("( [MAX ) ] )")  # an operator without arguments
@example("[SM 1 ] ]")  # "]" closing nothing
@example("[MIN [MAX 1 ]")  # an unclosed operator
@example("1 2")  # trailing words
@example("( )")  # no tokens
@given(listops_text)
def test_parse_and_evaluate_agree_with_a_reference_parser_or_fail_in_one_line(source):
    expected = reference_parse(source)
    parsed = outcome(lambda: listops.parse(source))
    value = outcome(lambda: listops.evaluate(source))
    if expected is None:
        assert isinstance(parsed, LRAError) and isinstance(value, LRAError)
        assert str(parsed) == str(value)  # one fold, one reason
    else:
        assert parsed == expected and value == listops._value(expected)


@PROPERTY
@given(listops_text)
def test_tokenize_gives_vocabulary_ids_or_fails_in_one_line(source):
    ids = outcome(lambda: listops.tokenize(source))
    words = [word for word in source.split() if word not in PARENS]
    if isinstance(ids, LRAError):
        assert not set(words) <= set(listops.VOCAB[1:])
    else:
        assert [listops.VOCAB[i] for i in ids] == words


@PROPERTY
@given(st.one_of(listops_text, st.text(max_size=60)), st.sampled_from((*DIGITS, "", "10", "x", "1\t2", " 3")))
def test_parse_row_gives_tokens_and_a_digit_or_fails_in_one_line(source, label):
    """A row's fields (their number is checked on the file's bytes, tasks.sources.tsv_rows)."""
    row = outcome(lambda: listops._parse_row(source, label))
    if not isinstance(row, LRAError):
        ids, value = row
        assert label == str(value) and ids == listops.tokenize(source) and ids


# --- ListOps split files ----------------------------------------------------------------------


@st.composite
def split_files(draw: st.DrawFn) -> tuple[bytes, list[int], int | None]:
    """A split file's bytes after a valid header, with its labels and the line of its first bad
    row (None when every row is good). Rows are good, or bad in one of the ways read_split names."""
    line_end = draw(st.sampled_from((b"\r\n", b"\n")))
    lines, labels, first_bad = [b"Source\tTarget"], [], None
    for lineno in range(2, draw(st.integers(2, 8))):
        tree = draw(small_trees)
        source = listops._source(tree)
        label = draw(st.one_of(st.just(str(listops._value(tree))), st.sampled_from(DIGITS)))  # often right
        kind = draw(st.sampled_from(("good", "good", "fields", "label", "token", "empty", "utf8")))
        if kind == "fields":
            row = draw(st.sampled_from((source, f"{source}\t{label}\t{label}"))).encode()
        elif kind == "label":
            row = f"{source}\t{draw(field_text.filter(lambda s: s not in DIGITS))}".encode()
        elif kind == "token":
            word = draw(field_text.filter(lambda w: w.split() == [w] and w not in KNOWN))
            row = f"{source} {word}\t{label}".encode()
        elif kind == "empty":
            row = f"{draw(st.sampled_from(('', '( )', ' ')))}\t{label}".encode()
        elif kind == "utf8":
            row = f"{source}\t".encode() + b"\xff" + label.encode()
        else:
            row = f"{source}\t{label}".encode()
            labels.append(int(label))
        if kind != "good" and first_bad is None:
            first_bad = lineno
        lines.append(row)
    final_end = draw(st.sampled_from((line_end, b"")))
    return line_end.join(lines) + final_end, labels, first_bad


@PROPERTY
@given(split_files())
def test_read_split_reads_good_rows_and_names_the_first_bad_line(case):
    data, labels, first_bad = case
    with file_holding(data, "basic_val.tsv") as path:
        split = outcome(lambda: listops.read_split(path, max_len=50), prefix=f"{path}:")
    if first_bad is not None:
        assert isinstance(split, LRAError) and str(split).startswith(f"{path}:{first_bad}: ")
    elif not labels:
        assert isinstance(split, LRAError) and str(split) == f"{path}: no examples after the header"
    else:
        assert not isinstance(split, LRAError), split
        assert split.labels.tolist() == labels


@PROPERTY
@given(st.one_of(st.binary(max_size=200), st.binary(max_size=100).map(lambda tail: b"Source\tTarget\r\n" + tail)))
def test_read_split_on_arbitrary_bytes_reads_or_fails_in_one_line_naming_the_file(data):
    with file_holding(data, "basic_train.tsv") as path:
        split = outcome(lambda: listops.read_split(path, max_len=50), prefix=f"{path}:")
    if not isinstance(split, LRAError):
        assert len(split) == len(data.split(b"\n")) - data.endswith(b"\n") - 1  # rows after the header


@PROPERTY
@given(split_files())
def test_check_split_passes_correct_labels_and_names_the_first_wrong_one(case):
    data, labels, first_bad = case
    with file_holding(data, "basic_test.tsv") as path:
        checked = outcome(lambda: listops.check_split(path, progress=False), prefix=f"{path}:")
    good_rows = data.splitlines()[1:first_bad and first_bad - 1]  # the rows before the first bad one
    values = [listops.evaluate(row.split(b"\t")[0].decode()) for row in good_rows]
    wrong = [(lineno, label, value) for lineno, (label, value) in enumerate(zip(labels, values), start=2)
             if label != value]
    if wrong:
        lineno, label, value = wrong[0]
        assert str(checked) == f"{path}:{lineno}: label {label}, but the expression evaluates to {value}"
    elif first_bad is not None:
        assert isinstance(checked, LRAError) and str(checked).startswith(f"{path}:{first_bad}: ")
    elif not labels:
        assert isinstance(checked, LRAError) and str(checked) == f"{path}: no examples after the header"
    else:
        assert checked == len(labels)


# --- Retrieval pairs --------------------------------------------------------------------------


def is_class(field: str, num_classes: int) -> bool:
    """Whether field reads as a whole number in [0, num_classes), as Python's float() reads numbers."""
    try:
        value = float(field)
    except ValueError:
        return False
    return value.is_integer() and 0 <= value < num_classes


@PROPERTY
@given(st.one_of(st.text(max_size=12), st.integers(-3, 12).map(str), st.floats().map(str)), st.integers(1, 10))
def test_parse_label_gives_a_class_or_fails_in_one_line(field, num_classes):
    label = outcome(lambda: retrieval.parse_label(field, num_classes))
    if is_class(field, num_classes):
        assert label == float(field)
    else:
        assert isinstance(label, LRAError)


@st.composite
def pair_files(draw: st.DrawFn) -> tuple[bytes, list[int], int | None]:
    """An AAN pairs file (label, id1, id2, text1, text2; no header), its labels and its first bad line."""
    line_end = draw(st.sampled_from((b"\r\n", b"\n")))
    lines, labels, first_bad = [], [], None
    for lineno in range(1, draw(st.integers(1, 6))):
        fields = [draw(st.sampled_from(("0", "1", "1.0", "0.0"))), *draw(st.lists(field_text, min_size=4, max_size=4))]
        kind = draw(st.sampled_from(("good", "good", "fields", "label", "utf8")))
        if kind == "fields":
            fields = fields[:draw(st.integers(1, 4))]
        elif kind == "label":
            fields[0] = draw(field_text.filter(lambda s: not is_class(s, 2)))
        row = "\t".join(fields).encode() + (b"\xc3" if kind == "utf8" else b"")
        if kind == "good":
            labels.append(int(float(fields[0])))
        elif first_bad is None:
            first_bad = lineno
        lines.append(row)
    final_end = draw(st.sampled_from((line_end, b""))) if lines else b""  # no rows: an empty file
    return line_end.join(lines) + final_end, labels, first_bad


@PROPERTY
@given(pair_files())
def test_read_pairs_reads_good_rows_and_names_the_first_bad_line(case):
    data, labels, first_bad = case
    with file_holding(data, "new_aan_pairs.eval.tsv") as path:
        pairs = outcome(lambda: retrieval.read_pairs(path, num_classes=2, max_len=8, progress=False),
                        prefix=f"{path}:")
    if first_bad is not None:
        assert isinstance(pairs, LRAError) and str(pairs).startswith(f"{path}:{first_bad}: ")
    elif not labels:
        assert isinstance(pairs, LRAError) and str(pairs) == f"{path}: no rows"
    else:
        assert not isinstance(pairs, LRAError), pairs
        assert pairs.labels.tolist() == labels


@PROPERTY
@given(st.binary(max_size=200))
def test_read_pairs_on_arbitrary_bytes_reads_or_fails_in_one_line_naming_the_file(data):
    with file_holding(data, "new_aan_pairs.test.tsv") as path:
        pairs = outcome(lambda: retrieval.read_pairs(path, num_classes=2, max_len=8, progress=False),
                        prefix=f"{path}:")
    if not isinstance(pairs, LRAError):
        assert len(pairs) == len(data.split(b"\n")) - data.endswith(b"\n")


# --- Table and settings files -----------------------------------------------------------------

# Labels that pandas and Python's float() read differently ("0_0"; "\u0661", an Arabic-Indic 1); quoted text.
csv_label = st.one_of(st.sampled_from(("0", "1", "1.0", "0.0", "1e0", " 1", "0_0", "\u0661", "True", "nan", "")),
                      field_text)
csv_text = st.one_of(field_text, st.sampled_from(('"', '"a,b"', '"a\nb"', "a,1")))
csv_files = st.lists(st.tuples(csv_text, csv_label), max_size=5).map(
    lambda rows: "\n".join(["text,label", *(f"{t},{label}" for t, label in rows)]).encode())


@PROPERTY
@example(b"text,label\nx,1.0\ny,0_0\n")  # a column of text that float() reads as classes 1, 0; int() not "1.0"
@given(csv_files)
def test_read_texts_from_csv_reads_or_fails_in_one_line_naming_the_file(data):
    with file_holding(data, "train-00000-of-00001.csv") as path:
        reviews = outcome(lambda: text.read_texts([path], num_classes=2, max_len=8, progress=False),
                          prefix=f"{path}:")
    if not isinstance(reviews, LRAError):
        assert set(reviews.labels.tolist()) <= {0, 1}


@PROPERTY
@example(b'"te\nxt",label\n')  # a column name with a line break, in the list of columns present
@given(st.one_of(st.binary(max_size=200), st.binary(max_size=100).map(lambda tail: b"text,label\n" + tail)))
def test_read_table_on_arbitrary_bytes_reads_or_fails_in_one_line_naming_the_file(data):
    with file_holding(data, "test.csv") as path:
        table = outcome(lambda: sources.read_table(path, ["text", "label"]), prefix=f"{path}:")
    if not isinstance(table, LRAError):
        assert list(table.columns) == ["text", "label"]


SETTINGS = {"seed": 0, "train": 10}


@PROPERTY
@given(st.one_of(st.binary(max_size=60), st.sampled_from((b'{"seed": 0, "train": 10}', b'{"seed": 1, "train": 10}',
                                                           b"[]", b"null", b'"x"', b"{"))))
def test_check_generated_accepts_its_settings_or_fails_in_one_line_naming_the_file(data):
    with file_holding(data, "generator.json") as path:
        checked = outcome(lambda: sources.check_generated(path, SETTINGS), prefix=f"{path}: ")
    try:
        same = json.loads(data.decode("utf-8")) == SETTINGS
    except ValueError:  # not UTF-8, or not JSON
        same = False
    assert (checked is None) == same
