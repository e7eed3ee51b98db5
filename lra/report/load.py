"""Run records in: every records.jsonl under a directory, as one DataFrame, each record named as
its row in the tables. Each record is checked against the schema (lra.records.read_records: a record
this code cannot read is an LRAError naming its file and line, never a wrong row), and records of older
schemas are read as the current one states them (lra.records.upgraded).

A cell of a table aggregates only records whose resolved configs differ by the seed alone (and by
the keys that name a run rather than what it computes: `IDENTITY` and the keys left out of the
config hash). Where records of one row label differ otherwise (a 20-step and a 2000-step run of
the same model, two lengths, two data sets...), each setup becomes a row of its own, labelled by
the keys that differ: `full-sdpa [trainer.max_steps=20]`, `full-sdpa [trainer.max_steps=2000]`.
Tables whose columns or heading give the length name rows by `length_model`, the same label less
the keys that state the length (`task.max_len`): the runs of one setup at several lengths share it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from lra.config import unhashed_keys
from lra.errors import LRAError
from lra.records import RECORDS_FILE, read_records, upgraded
from lra.report.cells import label

# Config keys that tell runs of one experiment apart without changing what it measures: the seed, the
# run lra-compress read (a directory per seed), and the lengths and modes of a bench job (each of
# its records names its own length and mode).
IDENTITY = ("seed", "compress.run", "bench.seq_lens", "bench.modes")
SHOWN_KEYS = 3  # a row label names at most this many differing keys, then how many more
SHOWN_VALUE = 32  # characters of a value in a row label (the end of a longer one: paths end in their names)


def load_records(runs: Path) -> pd.DataFrame:
    """Every record under `runs`, one row each, metrics flattened to `metrics.<name>` columns, and
    named as its row in the tables (see `labelled`)."""
    rows = []
    for path in sorted(Path(runs).rglob(RECORDS_FILE)):
        for record in map(upgraded, read_records(path)):
            fields = {key: value for key, value in record.items() if key != "config"}
            rows.append({**fields, "path": str(path.parent), "setup": experiment(record["config"])})
    if not rows:
        raise LRAError(f"{runs}: no {RECORDS_FILE} found")
    return pd.json_normalize([labelled(row) for row in with_setup_labels(rows)])


def experiment(config: dict[str, Any]) -> dict[str, str]:
    """What a record's config says of its experiment: every key as `a.b.c` -> its JSON value,
    without the seed and the other keys that do not change what is measured."""
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif prefix:
            flat[prefix[:-1]] = json.dumps(node, sort_keys=True)

    walk(config, "")
    for key in (*IDENTITY, *unhashed_keys()):
        flat.pop(key, None)
    return flat


def with_setup_labels(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` with `setup` replaced by the text that tells its experiment apart from the others of
    the same kind, hardware, task and row label ("" where they all share one), and `length_setup`
    by the same text over the setups less the keys that state the length (`length_keys`)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["kind"], row["hardware"], row["task"], label(row["model"], row["techniques"], row["precision"],
                                                                row["compression"], protocol=row["protocol"]))
        groups.setdefault(key, []).append(row)
    for group in groups.values():
        lengths = length_keys(group)
        lengthless = [{key: value for key, value in row["setup"].items() if key not in lengths} for row in group]
        texts, length_texts = setup_texts([row["setup"] for row in group]), setup_texts(lengthless)
        for row, setup in zip(group, lengthless):
            row["setup"], row["length_setup"] = texts[canonical(row["setup"])], length_texts[canonical(setup)]
    return rows


def length_keys(group: list[dict[str, Any]]) -> set[str]:
    """The config keys that follow the length in `group`, where it holds several lengths: keys whose
    value the row's seq_len decides (task.max_len, and what a task derives from it: a directory per
    length, generated length bounds, a resolution)."""
    if len({row["seq_len"] for row in group}) < 2:
        return set()
    keys = {key for row in group for key in row["setup"]}
    return {key for key in keys
            if all(len({row["setup"].get(key) for row in group if row["seq_len"] == length}) == 1
                   for length in {row["seq_len"] for row in group})}


def canonical(setup: dict[str, str]) -> str:
    return json.dumps(setup, sort_keys=True)


def setup_texts(setups: list[dict[str, str]]) -> dict[str, str]:
    """Per distinct setup (by `canonical`), the keys in which it differs from the others, with its
    values: `trainer.max_steps=20, task.max_len=64`; "" when there is one setup."""
    distinct = {canonical(setup): setup for setup in setups}
    if len(distinct) == 1:
        return dict.fromkeys(distinct, "")
    keys = sorted({key for setup in distinct.values() for key in setup
                   if len({setup.get(key) for setup in distinct.values()}) > 1})
    texts = {}
    for name, setup in distinct.items():
        shown = [f"{key}={short(setup.get(key))}" for key in keys[:SHOWN_KEYS]]
        more = [f"+{len(keys) - SHOWN_KEYS} more"] if len(keys) > SHOWN_KEYS else []
        texts[name] = ", ".join(shown + more)
    if len(set(texts.values())) < len(texts):  # the keys shown do not tell them apart: add the setup's hash
        texts = {name: f"{text}, setup {hashlib.sha256(name.encode()).hexdigest()[:6]}" for name, text in texts.items()}
    return texts


def short(value: str | None) -> str:
    """A config value as a row label shows it: unset, or its text, long ones cut to their end."""
    if value is None:
        return "unset"
    text = str(json.loads(value)) if value.startswith('"') else value
    return text if len(text) <= SHOWN_VALUE else "…" + text[-SHOWN_VALUE + 1:]


def labelled(record: dict) -> dict:
    """`record` with its row label as `model` (e.g. `full-sdpa + reversible + int8`, and its setup
    where records of that label differ: `full-sdpa [trainer.max_steps=20]`), its attention as
    `variant`, as `base_model` the label without the compression: the model it was made from, and as
    `length_model` the label whose setup leaves out the length (see `with_setup_labels`)."""
    techniques, protocol = list(record["techniques"]), record["protocol"]
    setup, length_setup = record["setup"], record.pop("length_setup")
    return {**record, "variant": record["model"], "techniques": techniques,
            "model": label(record["model"], techniques, record["precision"], record["compression"], setup, protocol),
            "base_model": label(record["model"], techniques, record["precision"], setup=setup, protocol=protocol),
            "length_model": label(record["model"], techniques, record["precision"], record["compression"],
                                  length_setup, protocol)}
