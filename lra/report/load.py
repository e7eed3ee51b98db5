"""Run records in: every records.jsonl under a directory, as one DataFrame."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lra.errors import LRAError
from lra.records import RECORDS_FILE, read_records

# Fields the report reads from every record (DESIGN.md, "Run records").
REQUIRED = ("kind", "model", "task", "hardware", "seed", "seq_len", "batch_size", "status", "metrics")


def load_records(runs: Path) -> pd.DataFrame:
    """Every record under `runs`, one row each, metrics flattened to `metrics.<name>` columns."""
    rows = []
    for path in sorted(Path(runs).rglob(RECORDS_FILE)):
        for number, record in enumerate(read_records(path), start=1):
            missing = [key for key in REQUIRED if not isinstance(record, dict) or key not in record]
            if missing:
                raise LRAError(f"{path}: record {number}: not a run record (missing: {', '.join(missing)})")
            record.pop("config", None)
            record["path"] = str(path.parent)
            rows.append(record)
    if not rows:
        raise LRAError(f"{runs}: no {RECORDS_FILE} found")
    return pd.json_normalize(rows)
