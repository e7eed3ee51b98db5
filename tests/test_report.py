"""lra-report: records in, tables out; malformed records named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lra.errors import LRAError
from lra.report import load_records, runs_table, write_report


def record(model: str, seed: int, accuracy: float | None, status: str = "ok") -> dict:
    return {
        "schema": 1, "kind": "train", "model": model, "task": "listops", "hardware": "cpu", "seed": seed,
        "seq_len": 128, "batch_size": 32, "status": status, "error": None if status == "ok" else "boom",
        "metrics": {"test_accuracy": accuracy, "val_accuracy": accuracy, "test_majority_rate": 0.14,
                    "steps": 10, "steps_per_s": 5.0, "tokens_per_s": 500.0, "peak_memory_mb": 3.0},
        "config": {"model": {"dim": 8}}, "env": {}, "wall_s": 1.0,
    }


def write(path: Path, *records: dict) -> None:
    path.mkdir(parents=True)
    (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_every_record_under_runs_becomes_a_row_with_percentages(tmp_path: Path):
    write(tmp_path / "runs" / "a", record("full-sdpa", 0, 0.4))
    write(tmp_path / "runs" / "deep" / "b", record("full-math", 0, 0.25), record("full-math", 1, None, "diverged"))
    table = runs_table(load_records(tmp_path / "runs"))
    assert table["model"].tolist() == ["full-math", "full-math", "full-sdpa"]
    assert table["test acc %"].tolist()[::2] == [25.0, 40.0]
    assert table["status"].tolist() == ["ok", "diverged", "ok"]
    paths = write_report(load_records(tmp_path / "runs"), tmp_path / "out")
    assert "| full-sdpa " in paths["md"].read_text() and "hardware: cpu" in paths["md"].read_text()
    assert paths["csv"].read_text().count("\n") == 4


def test_malformed_records_and_empty_dirs_are_named(tmp_path: Path):
    write(tmp_path / "runs" / "a", record("full-sdpa", 0, 0.4))
    with (tmp_path / "runs" / "a" / "records.jsonl").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(LRAError, match=r"a/records.jsonl:2: not a JSON record"):
        load_records(tmp_path / "runs")
    with pytest.raises(LRAError, match="no records.jsonl found"):
        load_records(tmp_path / "empty")
