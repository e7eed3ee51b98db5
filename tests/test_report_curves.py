"""Learning curves and time to accuracy: from the validation history of training runs to the plot,
the table, and their place in the report's files; runs without a history give neither."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lra.report import Setting, curves_plot, load_records, settings, summarise, time_to_accuracy_table, write_report
from lra.report.curves import NOT_REACHED
from tests.report_fixtures import learned, train, write

PNG = b"\x89PNG\r\n\x1a\n"
TEXT = Setting("cpu", "text", 128)


def load(tmp_path: Path, *records: dict) -> pd.DataFrame:
    return load_records(write(tmp_path / "runs", *records))


def curve_records() -> list[dict]:
    """On text (chance: a majority rate of 50%), best validation 100%, so the levels are 75%, 87.5%
    and 95%: fused attention reaches 75% exactly at its second validation, the others at its third;
    linear attention none; local attention's two seeds, timed differently, reach 75% both, 87.5% one."""
    return [
        learned("full-sdpa", "text", [0.5, 0.75, 1.0]),
        learned("linear", "text", [0.5, 0.625, 0.5]),
        learned("local", "text", [0.5, 0.875, 0.875], seconds=2.0),
        learned("local", "text", [0.5, 0.5, 0.75], seed=1, seconds=3.0),
    ]


def test_time_to_accuracy_is_the_first_validation_at_or_above_each_level(tmp_path: Path):
    summary = summarise(load(tmp_path, *curve_records()))
    cells = summary.time_to_accuracy
    assert sorted(cells["threshold"].unique()) == [75.0, 87.5, 95.0]
    fused = cells[cells["model"] == "full-sdpa"].set_index("threshold")
    assert fused["train_seconds"].to_dict() == {75.0: 4.0, 87.5: 6.0, 95.0: 6.0}  # 2 s per validation
    assert fused["step"].to_dict() == {75.0: 20.0, 87.5: 30.0, 95.0: 30.0}  # one every 10 steps
    table = time_to_accuracy_table(cells, TEXT)
    assert list(table.frame.columns) == ["val ≥ 75.0%", "val ≥ 87.5%", "val ≥ 95.0%"]
    assert table.frame.to_dict("index") == {
        "full-sdpa": {"val ≥ 75.0%": "4 s, 20 steps", "val ≥ 87.5%": "6 s, 30 steps",
                      "val ≥ 95.0%": "6 s, 30 steps"},
        "linear": dict.fromkeys(table.frame.columns, NOT_REACHED),
        # seed 0 at 4 s (step 20), seed 1 at 9 s (step 30): their mean; then seed 0 alone
        "local": {"val ≥ 75.0%": "6.5 s, 25 steps (2 of 2 runs)", "val ≥ 87.5%": "4 s, 20 steps (1 of 2 runs)",
                  "val ≥ 95.0%": NOT_REACHED},
    }
    assert "hardware cpu" in table.title and "128 tokens" in table.title
    assert "50%, 75%, 90% of the way from chance (50.0%" in table.notes[1] and "(100.0%)" in table.notes[1]


def test_records_without_a_history_give_no_curve_and_no_time(tmp_path: Path):
    older = [train("full-sdpa", "text", 0.9, examples=1000), train("linear", "text", None),  # schema 1, one failed
             learned("local", "text", [0.5, 0.9], status="diverged")]  # a history, but the run did not succeed
    summary = summarise(load(tmp_path / "older", *older))
    assert summary.curves.empty and summary.time_to_accuracy.empty and settings(summary.curves) == []
    paths = write_report(load(tmp_path / "older", *older), tmp_path / "out")
    assert not [path for path in paths if "curves" in path]
    assert "Learning curves" not in paths["leaderboard.md"].read_text()
    assert "time_to_accuracy" not in set(pd.read_csv(paths["leaderboard.csv"])["table"])

    mixed = summarise(load(tmp_path / "mixed", *older, learned("nystrom", "text", [0.5, 0.8])))
    assert set(mixed.curves["model"]) == set(mixed.time_to_accuracy["model"]) == {"nystrom"}


def test_no_level_where_no_run_beats_chance(tmp_path: Path):
    summary = summarise(load(tmp_path, learned("full-sdpa", "text", [0.5, 0.45])))
    assert len(summary.curves) == 2 and summary.time_to_accuracy.empty
    assert time_to_accuracy_table(summary.time_to_accuracy, TEXT) is None


@pytest.mark.parametrize("val_examples,levels", [(256, 0), (4000, 3)])
def test_no_level_where_the_best_validation_is_within_noise_of_chance(val_examples: int, levels: int, tmp_path: Path):
    """55% on 256 validation examples (Wilson interval [48.9, 61.0]) is noise against a 50% chance level;
    on 4000 it is not."""
    run = learned("full-sdpa", "text", [0.5, 0.55])
    run["metrics"]["val_examples"] = val_examples
    summary = summarise(load(tmp_path, run))
    assert len(summary.time_to_accuracy) == levels


def test_curves_plot_draws_each_run_against_steps_and_seconds_with_chance(tmp_path: Path):
    summary = summarise(load(tmp_path, *curve_records(), learned("full-sdpa", "listops", [0.2, 0.4], seq_len=64)))
    assert settings(summary.curves) == [Setting("cpu", "listops", 64), TEXT]  # LRA's task order
    steps, seconds = curves_plot(summary.curves, TEXT).axes
    shown = [line for line in seconds.get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label() for line in shown] == ["full-sdpa", "linear", "local (2 runs)", "chance (majority class)"]
    assert len(seconds.get_lines()) == len(steps.get_lines()) == 5  # a line per run, and chance
    local_seed_1 = seconds.get_lines()[3]
    assert local_seed_1.get_xdata().tolist() == [3.0, 6.0, 9.0] and local_seed_1.get_ydata().tolist() == [50, 50, 75]
    assert steps.get_lines()[0].get_xdata().tolist() == [10, 20, 30]
    assert list(shown[-1].get_ydata()) == [50, 50] and shown[-1].get_linestyle() == "--"
    assert "steps" in steps.get_xlabel() and "seconds on hardware cpu" in seconds.get_xlabel()


def test_report_files_hold_the_curves_and_the_csv_the_times(tmp_path: Path):
    paths = write_report(load(tmp_path, *curve_records()), tmp_path / "out")
    plot = "plots/curves_cpu_text_128.png"
    assert paths[plot].read_bytes().startswith(PNG)
    md, page = paths["leaderboard.md"].read_text(), paths["leaderboard.html"].read_text()
    for text in ["Learning curves", "Training seconds to validation accuracy: text, 128 tokens, hardware cpu",
                 "6.5 s, 25 steps (2 of 2 runs)"]:
        assert text in md and text in page
    assert f"]({plot})" in md and f'src="{plot}"' in page
    tidy = pd.read_csv(paths["leaderboard.csv"])
    times = tidy[tidy["table"] == "time_to_accuracy"]
    assert set(times["metric"]) == {"train_seconds_to_threshold", "steps_to_threshold"}
    local = times[(times["model"] == "local") & (times["metric"] == "train_seconds_to_threshold")]
    assert local.set_index("threshold")["value"].to_dict() == pytest.approx({75.0: 6.5, 87.5: 4.0, 95.0: float("nan")},
                                                                           nan_ok=True)
    assert local["status"].tolist() == ["ok", "ok", NOT_REACHED] and local["n"].tolist() == [2, 1, 0]
    assert local["seq_len"].unique().tolist() == [128] and local["majority"].unique().tolist() == [50.0]
    assert local["note"].iloc[1].endswith("reached by 1 of 2 runs")
