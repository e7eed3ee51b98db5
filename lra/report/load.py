"""Run records in: every records.jsonl under a directory, as one DataFrame."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lra.errors import LRAError
from lra.records import RECORDS_FILE, read_records
from lra.report.cells import FP32, label

# Fields the report reads from every record (DESIGN.md, "Run records").
REQUIRED = ("kind", "model", "task", "hardware", "seed", "seq_len", "batch_size", "status", "metrics")
# What records of schema 1, which lack these fields, were: no technique, fp32, not compressed.
SCHEMA_1 = {"techniques": (), "precision": FP32, "compression": None}


def load_records(runs: Path) -> pd.DataFrame:
    """Every record under `runs`, one row each, metrics flattened to `metrics.<name>` columns, and
    named as its row in the tables (see `labelled`)."""
    rows = []
    for path in sorted(Path(runs).rglob(RECORDS_FILE)):
        for number, record in enumerate(read_records(path), start=1):
            missing = [key for key in REQUIRED if not isinstance(record, dict) or key not in record]
            if missing:
                raise LRAError(f"{path}: record {number}: not a run record (missing: {', '.join(missing)})")
            record.pop("config", None)
            record["path"] = str(path.parent)
            rows.append(labelled({**SCHEMA_1, **record}))
    if not rows:
        raise LRAError(f"{runs}: no {RECORDS_FILE} found")
    return pd.json_normalize(rows)


def labelled(record: dict) -> dict:
    """`record` with its row label as `model` (e.g. `full-sdpa + reversible + int8`), its attention
    as `variant`, and as `base_model` the label without the compression: the model it was made from."""
    techniques = list(record["techniques"])
    return {**record, "variant": record["model"], "techniques": techniques,
            "model": label(record["model"], techniques, record["precision"], record["compression"]),
            "base_model": label(record["model"], techniques, record["precision"])}
