"""Accuracy against length: one row per setup across its lengths, a column per length, the accuracy
table's intervals and chance mark, the plot beside throughput and memory, and the report's files."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from lra.report import accuracy_tables, length_plot, length_table, load_records, summarise, write_report
from lra.report.uncertainty import t_quantile, wilson
from tests.report_fixtures import learned, train, write

PNG = b"\x89PNG\r\n\x1a\n"


def load(tmp_path: Path, *records: dict) -> pd.DataFrame:
    return load_records(write(tmp_path / "runs", *records))


def length_records() -> list[dict]:
    """Fused attention at 64, 128 and 256 tokens (two seeds at 256), linear attention at 64 and 128
    (at chance there) and out of memory at 256, fused attention also with 20 steps at 64 (a setup of
    its own), and ListOps at one length only (no table)."""
    steps_20 = {"trainer": {"max_steps": 20}}
    return [
        learned("full-sdpa", "text", [0.6, 0.8], seq_len=64), learned("full-sdpa", "text", [0.6, 0.75], seq_len=128),
        learned("full-sdpa", "text", [0.6, 0.7], seq_len=256), learned("full-sdpa", "text", [0.6, 0.68], seq_len=256,
                                                                       seed=1),
        learned("linear", "text", [0.5, 0.52], seq_len=64), learned("linear", "text", [0.5, 0.51], seq_len=128),
        {**learned("linear", "text", [0.5], seq_len=256), "status": "oom", "error": "out of memory"},
        learned("full-sdpa", "text", [0.6, 0.65], seq_len=64, config=steps_20),
        learned("full-sdpa", "listops", [0.2, 0.3], seq_len=512),
    ]


def test_accuracy_by_length_has_a_column_per_length_and_the_accuracy_tables_intervals(tmp_path: Path):
    summary = summarise(load(tmp_path, *length_records()))
    assert set(summary.lengths["task"]) == {"text"}  # ListOps was trained at one length
    table = length_table(summary.lengths)
    assert list(table.frame.columns) == [64, 128, 256]
    low, high = wilson(0.8, 1000)
    half = t_quantile(1) * pd.Series([70.0, 68.0]).std() / math.sqrt(2)
    fused = table.frame.loc["full-sdpa [trainer.max_steps=unset]"].tolist()
    assert fused == [f"80.00 [{100 * low:.1f}, {100 * high:.1f}]", "75.00 [72.2, 77.6]",
                     f"69.00 ± 1.41 (2) [{69 - half:.1f}, {69 + half:.1f}]"]
    assert table.frame.loc["full-sdpa [trainer.max_steps=20]"].tolist() == ["65.00 [62.0, 67.9]", "—", "—"]
    assert table.frame.loc["linear"].tolist() == ["52.00 [48.9, 55.1] (chance)", "51.00 [47.9, 54.1] (chance)", "OOM"]
    assert table.frame.loc["majority class"].tolist() == ["50.00", "50.00", "50.00"]
    assert "hardware cpu" in table.title and "text" in table.title

    # each cell is the accuracy table's cell of the same runs, where the length is part of the row's name
    [accuracy] = accuracy_tables(summary.accuracy)
    assert accuracy.frame.loc["full-sdpa [task.max_len=256, trainer.max_steps=unset]", "text"] == fused[2]
    assert accuracy.frame.loc["linear [task.max_len=64]", "text"] == table.frame.loc["linear", 64]


def test_the_notes_say_at_each_length_which_rows_are_within_noise_of_the_best_there(tmp_path: Path):
    """Significance is judged among the rows of one length, never across lengths."""
    final = {(64, "full-sdpa"): 0.99, (64, "linear"): 0.98, (64, "local"): 0.25,
             (128, "full-sdpa"): 0.95, (128, "linear"): 0.60, (128, "local"): 0.26}
    records = [learned(model, "recall", [0.3, accuracy], seq_len=length) for (length, model), accuracy in final.items()]
    notes = length_table(summarise(load(tmp_path, *records)).lengths).notes
    assert "64 tokens: the best row, full-sdpa (99.00), is within noise of linear; the other rows are below it" in \
        " ".join(notes)
    assert "128 tokens: the best row, full-sdpa (95.00), is ahead of every other row by more than the noise." in notes


def test_length_plot_has_accuracy_with_intervals_throughput_and_memory_on_log2_lengths(tmp_path: Path):
    summary = summarise(load(tmp_path, *length_records()))
    accuracy, speed, memory = length_plot(summary.lengths).axes
    for ax in (accuracy, speed, memory):
        assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
        assert [tick.get_text() for tick in ax.get_xticklabels()] == ["64", "128", "256"]
    [fused_20, fused, linear] = accuracy.containers  # an error bar per row
    low, high = wilson(0.8, 1000)
    assert fused.lines[0].get_ydata().tolist() == [80.0, 75.0, 69.0] and fused_20.lines[0].get_ydata().tolist() == [65]
    bar_64 = fused.lines[2][0].get_segments()[0]  # the interval at 64 tokens
    assert bar_64[:, 1].tolist() == pytest.approx([100 * low, 100 * high])
    assert linear.lines[0].get_xdata().tolist() == [64, 128]  # out of memory at 256: no point
    chance = [line for line in accuracy.get_lines() if line.get_label() == "chance (majority class)"]
    assert [line.get_ydata().tolist() for line in chance] == [[50.0, 50.0, 50.0]]
    assert speed.get_lines()[1].get_ydata().tolist() == [128.0, 256.0, 512.0]  # fused attention (2 × length tokens/s)
    assert "tokens/s" in speed.get_ylabel() and "live tensor bytes" in memory.get_ylabel()
    assert memory.get_yscale() == speed.get_yscale() == "log"


def test_report_files_hold_the_length_table_and_plot_and_the_csv_its_cells(tmp_path: Path):
    paths = write_report(load(tmp_path, *length_records()), tmp_path / "out")
    plot = "plots/lengths_cpu_text.png"
    assert paths[plot].read_bytes().startswith(PNG)
    md, page = paths["leaderboard.md"].read_text(), paths["leaderboard.html"].read_text()
    for text in ["Accuracy against length", "Test accuracy % by sequence length: text, hardware cpu", "(chance)"]:
        assert text in md and text in page
    assert f"]({plot})" in md and f'src="{plot}"' in page
    tidy = pd.read_csv(paths["leaderboard.csv"])
    lengths = tidy[(tidy["table"] == "accuracy_vs_length") & (tidy["model"] == "linear")]
    accuracy = lengths[lengths["metric"] == "test_accuracy_pct"].set_index("seq_len")
    assert accuracy["value"].to_dict() == pytest.approx({64: 52.0, 128: 51.0, 256: float("nan")}, nan_ok=True)
    assert accuracy["status"].tolist() == ["ok", "ok", "oom"] and accuracy["at_chance"].tolist()[:2] == [True, True]
    figures = lengths[lengths["metric"] != "test_accuracy_pct"]
    assert sorted(zip(figures["metric"], figures["seq_len"], figures["value"])) == [
        ("peak_memory_mb", 64, 1.0), ("peak_memory_mb", 128, 2.0), ("tokens_per_s", 64, 128.0),
        ("tokens_per_s", 128, 256.0)]
    assert set(figures.loc[figures["metric"] == "peak_memory_mb", "note"]) == {"live_tensor_bytes"}


def test_no_length_table_for_one_length_or_older_records(tmp_path: Path):
    summary = summarise(load(tmp_path, train("full-sdpa", "text", 0.7), train("linear", "text", 0.6)))
    assert summary.lengths.empty
    paths = write_report(load(tmp_path, train("full-sdpa", "text", 0.7)), tmp_path / "out")
    assert "Accuracy against length" not in paths["leaderboard.md"].read_text()
    assert not [path for path in paths if "lengths" in path]


def test_keys_that_follow_the_length_do_not_split_a_row(tmp_path: Path):
    """ListOps generated per length: its directory and length bounds change with max_len, yet one row."""
    records = [learned(model, "listops", [0.2, accuracy], seq_len=length,
                       config={"task": {"dir": f"listops-gen-{length}", "generate": {"min_len": length // 8}}})
               for model, accuracy in (("full-sdpa", 0.4), ("local", 0.3)) for length in (128, 256)]
    table = length_table(summarise(load(tmp_path, *records)).lengths)
    assert table.frame.index.tolist() == ["full-sdpa", "local", "majority class"]
