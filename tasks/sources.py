"""Where task data comes from, and how it is read: local files under data.root, the Hugging Face hub
cache (offline), and generated directories; and the one-paragraph error when none has it.

Files are loaded with `datasets` (its parquet and csv loaders, streamed: the tokenised splits are
what tasks/cache.py keeps, so no second copy of a source is written) and never over the network.
Hub datasets are read from the parquet files that `datasets.load_dataset(<repo>)` (or
`hf download <repo> --repo-type dataset`) leaves in the hub cache on a connected machine.

Tab-separated files (the LRA release's ListOps and AAN splits) are read row by row with line
numbers, so that every error names `path:line`. datasets' csv loader (pandas) reads a missing field
as an empty one, so the number of fields of each line, and its UTF-8, are checked on the bytes
first; the rows before the first bad line are still read, so a reader reports whichever problem
comes first in the file.
"""

from __future__ import annotations

import csv
import glob
import json
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lra.errors import LRAError, one_line

TABLE_SUFFIXES = (".parquet", ".csv")
BATCH_ROWS = 10_000  # rows per Arrow batch read from a source
BLOCK_BYTES = 1 << 24  # bytes of a tab-separated file checked at a time


def missing_data(what: str, looked: str, get: str) -> LRAError:
    """The error for absent data: what is missing, where it was looked for, how to get it."""
    return LRAError(f"no {what}: looked for {looked}. To get it: {get}")


def generate_command(dataset: str, out: Path, settings: dict[str, Any]) -> str:
    """The `lra-data <dataset>` command that writes what `settings` ask for (those `check_generated`
    compares, named as its options), to paste into a shell."""
    options = [part for name, value in settings.items() for part in (f"--{name.replace('_', '-')}", str(value))]
    return shlex.join(["lra-data", dataset, "--out", str(out), *options])


def excerpt(text: str, limit: int = 40) -> str:
    """A short one-line quotation of user text for an error message."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def split_tables(directory: Path, split: str) -> list[Path]:
    """The parquet or csv files of one split under directory (any depth, as the hub lays them out:
    plain_text/train-00000-of-00001.parquet), named by the split."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob(f"{split}*") if p.suffix in TABLE_SUFFIXES and p.is_file())


def hub_snapshot(repo_id: str) -> Path | None:
    """The hub cache's snapshot of a dataset repository, or None; never touches the network."""
    from huggingface_hub import snapshot_download  # noqa: PLC0415  (hub code only on this path)

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
    except Exception:  # huggingface_hub raises several kinds for "not in the cache"
        return None


def _bases(directory: Path, hub: str) -> Iterator[Path]:
    """`directory`, then the hub cache's snapshot of `hub` where there is one, looked up only when
    the directory does not have the files."""
    yield directory
    snapshot = hub_snapshot(hub)
    if snapshot is not None:
        yield snapshot


def table_sources(directory: Path, hub: str, splits: Sequence[str], what: str) -> dict[str, list[Path]]:
    """Each split's table files: from `directory` when it has them, else the hub cache of `hub`.

    Raises the missing-data error (naming both places and how to fill either) when neither has
    every split.
    """
    for base in _bases(directory, hub):
        found = {split: split_tables(base, split) for split in splits}
        if all(found.values()):
            return found
        if any(found.values()):
            missing = ", ".join(split for split, files in found.items() if not files)
            raise LRAError(f"{base}: no {missing} split among its {'/'.join(TABLE_SUFFIXES)} files "
                           f"(looked for files named {'*, '.join(splits)}*)")
    from huggingface_hub.constants import HF_HUB_CACHE  # noqa: PLC0415

    names = "/".join(f"{split}*" for split in splits)
    raise missing_data(
        what,
        f"{names} parquet or csv files under {directory} and the Hugging Face cache ({HF_HUB_CACHE}) of {hub}",
        f"on a connected machine run `python -c \"import datasets; datasets.load_dataset('{hub}')\"` "
        f"(then copy its cache here or point HF_HUB_CACHE at it), or put the files under {directory}.",
    )


def _offline_datasets() -> ModuleType:
    """The datasets library, set never to reach the network (not even to count a download): task data
    comes from local files and the hub cache only; and quiet: a file it cannot read is our one-line
    error, not its log line too. Imported here, so that a cached task never loads it."""
    import datasets  # noqa: PLC0415

    datasets.config.HF_HUB_OFFLINE = True
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    return datasets


def _batches(builder: str, path: Path, **options: Any) -> Iterator[pa.Table]:
    """The Arrow batches of one file as datasets' `builder` loader reads it, streamed."""
    dataset = _offline_datasets().load_dataset(builder, data_files=glob.escape(str(path)), split="train",
                                               streaming=True, **options)
    return dataset.with_format("arrow").iter(batch_size=BATCH_ROWS)


def read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """The named columns of a parquet or csv file, loaded with datasets; LRAError names the file and
    what is wrong, and the first row holding no value in one of them (a null, or in a csv file an empty
    field: how csv writes a missing value), which would otherwise be read as the text "nan" or "None".
    A csv file's columns are read as the text they hold."""
    try:
        if path.suffix == ".parquet":
            present = pq.read_schema(path).names
        else:
            present = list(pd.read_csv(path, nrows=0).columns)
        absent = [column for column in columns if column not in present]
        if absent:
            raise LRAError(f"{path}: no column {', '.join(map(repr, absent))} (it has {', '.join(map(repr, present))})")
        if path.suffix == ".parquet":
            batches = list(_batches("parquet", path, columns=list(columns)))
        else:
            datasets = _offline_datasets()
            text = datasets.Features({name: datasets.Value("string") for name in present})
            batches = [batch.select(columns) for batch in _batches("csv", path, features=text, keep_default_na=False,
                                                                   na_values=[""])]
    except (OSError, ValueError) as err:  # pyarrow's and pandas' errors are OSError/ValueError
        raise LRAError(f"{path}: not a readable {path.suffix[1:]} file: {one_line(str(err))}") from None
    if not batches:
        return pd.DataFrame(columns=list(columns))
    table = pa.concat_tables(batches)
    _check_values(table, path)
    return table.to_pandas()


def _check_values(table: pa.Table, path: Path) -> None:
    """LRAError naming the first row (1-based, of the data) of `table`, read from `path`, where a
    column holds no value, and the column."""
    nulls = {name: pc.index(table.column(name).is_null(), True).as_py() for name in table.column_names}
    present = {name: index for name, index in nulls.items() if index >= 0}
    if present:
        name = min(present, key=present.get)
        missing = "null" if path.suffix == ".parquet" else "missing (an empty field)"
        raise LRAError(f"{path}: row {present[name] + 1}: {name} is {missing}")


def check_labels(labels: Any, num_classes: int, path: Path) -> np.ndarray:
    """The labels as int64 class ids, once each is checked to be an integer in [0, num_classes);
    LRAError names the first row that is not.

    The ids come from the values checked: a csv column holds text, which float() reads as a class
    ("1.0", "0_0") where numpy's int conversion would not.
    """
    ids = []
    for row, label in enumerate(labels, start=1):
        try:
            value = float(label)
        except (TypeError, ValueError):
            value = float("nan")
        if not (value.is_integer() and 0 <= value < num_classes):
            shown = repr(label) if isinstance(label, str) else label
            raise LRAError(f"{path}: row {row}: label {shown} is not a class 0-{num_classes - 1}")
        ids.append(int(value))
    return np.array(ids, dtype=np.int64)


def tsv_rows(path: Path, columns: Sequence[str], header: bool = False) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each row of a tab-separated file, loaded with datasets' csv loader:
    no quoting, lines end at a line feed (a carriage return before it is dropped), every line a row.

    With `header`, the first line must be the column names. LRAError names the first line that is
    not UTF-8 or has another number of fields than `columns`, after the rows before it are yielded.
    """
    skip = int(header)
    if header:
        _check_header(path, columns)
    rows, error = _check_lines(path, columns, skip)
    if rows:
        names = [f"field{i}" for i in range(len(columns))]  # the file's own words may repeat or be empty
        datasets = _offline_datasets()
        options = {"delimiter": "\t", "header": None, "column_names": names, "skiprows": skip, "nrows": rows,
                   "quoting": csv.QUOTE_NONE, "lineterminator": "\n", "skip_blank_lines": False,
                   "keep_default_na": False, "na_filter": False, "encoding": "utf-8",
                   "features": datasets.Features({name: datasets.Value("string") for name in names})}
        lineno = skip
        for batch in _batches("csv", path, **options):
            for fields in zip(*(batch.column(name).to_pylist() for name in names)):
                lineno += 1
                yield lineno, [*fields[:-1], fields[-1].rstrip("\r")]
    if error is not None:
        raise error


def _check_header(path: Path, columns: Sequence[str]) -> None:
    """Refuse a file whose first line is not the column names, tab-separated."""
    expected = "\t".join(columns)
    shown = expected.replace("\t", "<TAB>")
    try:
        with path.open("rb") as file:
            first = file.readline()
    except OSError as err:
        raise LRAError(f"{path}: cannot read: {err.strerror or err}") from None
    if not first:
        raise LRAError(f"{path}: empty file; expected the header '{shown}'")
    try:
        line = first.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise LRAError(f"{path}:1: not UTF-8 text") from None
    if line != expected:
        raise LRAError(f"{path}:1: expected the header '{shown}', got {excerpt(line)}")


def _check_lines(path: Path, columns: Sequence[str], skip: int) -> tuple[int, LRAError | None]:
    """How many lines after the first `skip` come before the first bad one, and the error naming the
    bad one (None when every line is good)."""
    lineno = 0  # lines before the block
    try:
        with path.open("rb") as file:
            for block in _line_blocks(file):
                bad = _first_bad_line(block, columns, first=max(skip - lineno, 0))
                if bad is not None:
                    index, problem = bad
                    return lineno + index - skip, LRAError(f"{path}:{lineno + index + 1}: {problem}")
                lineno += block.count(b"\n") + (not block.endswith(b"\n"))
    except OSError as err:
        raise LRAError(f"{path}: cannot read: {err.strerror or err}") from None
    return max(lineno - skip, 0), None


def _first_bad_line(block: bytes, columns: Sequence[str], first: int) -> tuple[int, str] | None:
    """(index, what is wrong) of the first of the block's lines, from index `first` on, that is not
    UTF-8 or has another number of tab-separated fields than `columns`; None when there is none."""
    data = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(data == ord("\n"))
    if not block.endswith(b"\n"):
        ends = np.append(ends, len(block))
    tabs = np.flatnonzero(data == ord("\t"))
    fields = np.searchsorted(tabs, ends) - np.searchsorted(tabs, np.r_[0, ends[:-1] + 1]) + 1
    miscounted = first + np.flatnonzero(fields[first:] != len(columns))
    try:
        block.decode("utf-8")
        garbled = len(ends)
    except UnicodeDecodeError as err:
        garbled = int(np.searchsorted(ends, err.start))
    if garbled < len(ends) and (not len(miscounted) or garbled <= miscounted[0]):
        return garbled, "not UTF-8 text"
    if len(miscounted):
        index = int(miscounted[0])
        return index, f"expected {len(columns)} tab-separated fields ({', '.join(columns)}), got {fields[index]}"
    return None


def _line_blocks(file: BinaryIO) -> Iterator[bytes]:
    """The file's bytes in blocks of whole lines, each ending at a line feed but perhaps the last."""
    rest = b""
    while chunk := file.read(BLOCK_BYTES):
        block = rest + chunk
        cut = block.rfind(b"\n") + 1
        if cut:
            yield block[:cut]
        rest = block[cut:]
    if rest:
        yield rest


def check_generated(settings_file: Path, settings: dict[str, Any]) -> None:
    """Refuse data generated with other settings than the config asks for (it would be read as if
    it were what the config says)."""
    if not settings_file.exists():
        return
    try:
        written = json.loads(settings_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # unreadable, not UTF-8, not JSON, nested too deep
        raise LRAError(f"{settings_file}: not a readable settings file: {one_line(str(err))}") from None
    if not isinstance(written, dict):
        raise LRAError(f"{settings_file}: not a settings file: expected a JSON object of settings")
    if written != settings:
        raise LRAError(
            f"{settings_file}: data generated with other settings: {_differences(written, settings)}; "
            "delete the directory to regenerate, or set task.dir"
        )


def _differences(written: dict[str, Any], settings: dict[str, Any]) -> str:
    """`key=written (task.generate: wanted)` for each setting that differs, then the written keys
    that are no setting; values as JSON, so the line stays one line and "0" differs from 0."""
    changed = [f"{key}={json.dumps(written.get(key))} (task.generate: {json.dumps(value)})"
               for key, value in settings.items() if written.get(key) != value]
    unknown = [json.dumps(key) for key in written if key not in settings]
    return ", ".join([*changed, *([f"unknown keys {', '.join(unknown)}"] if unknown else [])])
