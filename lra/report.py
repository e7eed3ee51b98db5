"""Leaderboards from run records: load every records.jsonl under a directory into one DataFrame,
then render tables. Reads records only; never imports the models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lra.errors import LRAError
from lra.records import RECORDS_FILE

# Columns of the per-run table, from the flattened records: (column, header).
RUN_COLUMNS = {
    "model": "model",
    "task": "task",
    "hardware": "hardware",
    "seed": "seed",
    "status": "status",
    "test_accuracy_pct": "test acc %",
    "test_majority_pct": "majority %",
    "val_accuracy_pct": "val acc %",
    "metrics.steps": "steps",
    "metrics.steps_per_s": "steps/s",
    "metrics.tokens_per_s": "tokens/s",
    "metrics.peak_memory_mb": "peak MB",
}


def load_records(runs: Path) -> pd.DataFrame:
    """Every record under `runs`, one row each, metrics flattened to `metrics.<name>` columns."""
    rows = []
    for path in sorted(Path(runs).rglob(RECORDS_FILE)):
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise LRAError(f"{path}:{lineno}: not a JSON record ({error.msg})") from error
            record.pop("config", None)
            record["path"] = str(path.parent)
            rows.append(record)
    if not rows:
        raise LRAError(f"{runs}: no {RECORDS_FILE} found")
    return pd.json_normalize(rows)


def runs_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per training run: accuracy (%, against the majority-class rate), speed and memory."""
    train = records[records["kind"] == "train"].copy()
    for name, source in [("test_accuracy", "metrics.test_accuracy"), ("val_accuracy", "metrics.val_accuracy"),
                         ("test_majority", "metrics.test_majority_rate")]:
        train[f"{name}_pct"] = 100 * train[source] if source in train else float("nan")
    columns = [c for c in RUN_COLUMNS if c in train]
    table = train[columns].rename(columns=RUN_COLUMNS).sort_values(["task", "model", "seed"])
    return table.round(2).reset_index(drop=True)


def write_report(records: pd.DataFrame, out: Path) -> dict[str, Path]:
    """Write leaderboard.md and leaderboard.csv under `out`; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    table = runs_table(records)
    paths = {"md": out / "leaderboard.md", "csv": out / "leaderboard.csv"}
    hardware = ", ".join(sorted(records["hardware"].unique()))
    measures = ", ".join(sorted(records.get("metrics.memory_measure", pd.Series(dtype=str)).dropna().unique()))
    paths["md"].write_text(
        f"# Training runs (hardware: {hardware})\n\n{table.to_markdown(index=False)}\n\n"
        f"peak MB: memory of one training step above the resident model and optimizer state ({measures}).\n"
    )
    table.to_csv(paths["csv"], index=False)
    return paths
