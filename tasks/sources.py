"""Where task data comes from: local files under data.root, the Hugging Face hub cache (offline),
and generated directories; and the one-paragraph error when none has it.

Hub datasets are read from the parquet files that `datasets.load_dataset(<repo>)` (or
`hf download <repo> --repo-type dataset`) leaves in the hub cache on a connected machine; nothing
is fetched here.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from lra.errors import LRAError, one_line

TABLE_SUFFIXES = (".parquet", ".csv")


def missing_data(what: str, looked: str, get: str) -> LRAError:
    """The error for absent data: what is missing, where it was looked for, how to get it."""
    return LRAError(f"no {what}: looked for {looked}. To get it: {get}")


def generate_command(dataset: str, out: Path, settings: dict[str, Any]) -> str:
    """The `lra-data <dataset>` command that writes what `settings` ask for (those `check_generated`
    compares, named as its options), to paste into a shell."""
    options = [part for name, value in settings.items() for part in (f"--{name.replace('_', '-')}", str(value))]
    return shlex.join(["lra-data", dataset, "--out", str(out), *options])


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


def table_sources(directory: Path, hub: str, splits: Sequence[str], what: str) -> dict[str, list[Path]]:
    """Each split's table files: from `directory` when it has them, else the hub cache of `hub`.

    Raises the missing-data error (naming both places and how to fill either) when neither has
    every split.
    """
    for base in (directory, hub_snapshot(hub)):
        if base is None:
            continue
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


def read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """The named columns of a parquet or csv file; LRAError names the file and what is wrong."""
    try:
        if path.suffix == ".parquet":
            present = pq.read_schema(path).names
        else:
            present = list(pd.read_csv(path, nrows=0).columns)
        absent = [column for column in columns if column not in present]
        if absent:
            raise LRAError(f"{path}: no column {', '.join(map(repr, absent))} (it has {', '.join(map(repr, present))})")
        if path.suffix == ".parquet":
            return pd.read_parquet(path, columns=list(columns))
        return pd.read_csv(path, usecols=list(columns), keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:  # pyarrow's errors are OSError/ValueError
        raise LRAError(f"{path}: not a readable {path.suffix[1:]} file: {one_line(str(err))}") from None


def check_labels(labels: Any, num_classes: int, path: Path) -> np.ndarray:
    """The labels as int64 class ids, once each is checked to be an integer in [0, num_classes);
    LRAError names the first row that is not.

    The ids come from the values checked: a csv column can hold text that float() reads as a
    class but numpy's int conversion does not ("1.0" beside "0_0", which keeps pandas from
    reading the column as numbers).
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
