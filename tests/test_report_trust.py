"""What a leaderboard cell may claim: it aggregates one experiment (runs differing by the seed
alone), says how sure it is (95% interval), says when it is at chance, and says when two rows are
not told apart."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lra.records import SCHEMA, upgraded
from lra.report import accuracy_tables, bubble_plot, load_records, summarise, write_report
from lra.report.uncertainty import t_quantile, wilson
from tests.report_fixtures import bench, compress, train, write


def config(seed: int = 0, steps: int = 2000, **more) -> dict:
    """A resolved config as a record carries it: the seed, the trainer's steps and whatever else."""
    return {"seed": seed, "trainer": {"max_steps": steps, "progress": False}, "model": {"dim": 8}, **more}


def accuracy_frame(runs: Path):
    [table] = accuracy_tables(summarise(load_records(runs)).accuracy)
    return table


def test_a_cell_aggregates_only_runs_whose_configs_differ_by_the_seed(tmp_path: Path):
    runs = write(tmp_path / "runs", *[
        train("full-sdpa", "listops", accuracy, seed=seed, config=config(seed, steps=2000))
        for seed, accuracy in [(0, 0.40), (1, 0.42)]
    ], train("full-sdpa", "listops", 0.20, config=config(0, steps=20)),  # a smoke run of the same model
        train("local", "listops", 0.30, config=config(0)),
        train("local", "listops", 0.32, seed=1, config={**config(1), "trainer": {"max_steps": 2000, "progress": True}}))
    table = accuracy_frame(runs)
    rows = list(table.frame.index)
    # the two experiments of full-sdpa are two rows, named by what differs; local's two seeds differ
    # in the seed and in a key that does not change what is computed (progress): one cell of two seeds
    assert rows == ["full-sdpa [trainer.max_steps=2000]", "full-sdpa [trainer.max_steps=20]", "local",
                    "majority class"]
    assert table.frame.loc["full-sdpa [trainer.max_steps=20]", "listops"] == "20.00"
    assert table.frame.loc["full-sdpa [trainer.max_steps=2000]", "listops"].startswith("41.00 ± 1.41 (2)")
    assert table.frame.loc["local", "listops"].startswith("31.00 ± 1.41 (2)")
    assert any("[key=value] after a row's name" in note for note in table.notes)


def test_row_labels_name_at_most_three_differing_keys_and_stay_distinct(tmp_path: Path):
    different = [config(0, steps=20, task={"max_len": length, "dir": f"data/{length}", "a": 1, "b": length})
                 for length in (64, 128)]
    same_shown = [config(0, steps=20, task={"max_len": 64, "dir": "data/64", "a": 1, "b": 1, "z": z}) for z in (1, 2)]
    runs = write(tmp_path / "runs", *[train("linear", "text", 0.5 + i / 10, config=c)
                                      for i, c in enumerate(different + same_shown)])
    rows = [row for row in accuracy_frame(runs).frame.index if row != "majority class"]
    assert len(set(rows)) == 4
    assert all(row.startswith("linear [") and row.endswith("]") for row in rows)
    assert any("+1 more" in row or "+2 more" in row for row in rows)  # 4 or 5 keys differ, 3 are named
    assert sum("setup " in row for row in rows) == 4  # the shown keys alone would not tell them apart


def test_compress_and_bench_runs_of_one_experiment_share_their_cells(tmp_path: Path):
    """lra-compress records name the run they read (a directory per seed), and a bench job its lengths:
    neither splits a cell."""
    runs = write(tmp_path / "runs", *[
        compress("full-sdpa", "listops", "int8", accuracy, seed=seed,
                 config={**config(seed), "compress": {"run": f"runs/full_s{seed}", "quantize": True}})
        for seed, accuracy in [(0, 0.40), (1, 0.42)]
    ], *[bench("local", 1024, steps=steps, memory=5, config={"seed": 0, "bench": {"seq_lens": lengths}})
         for steps, lengths in [(10, [1024]), (12, [1024, 2048])]])
    summary = summarise(load_records(runs))
    cell = summary.accuracy.set_index(["model", "task"]).loc[("full-sdpa + int8", "listops")]
    assert cell["n"] == 2 and cell["value"] == pytest.approx(41.0)
    [speed] = summary.efficiency.loc[summary.efficiency["model"] == "local", "steps_per_s"]
    assert speed == pytest.approx(11.0)


def chance_runs() -> list[dict]:
    """Pathfinder (majority rate 50.6% of 1000 test examples): a row at chance, a degenerate one,
    two rows above chance that are within noise of each other, and two seeds whose mean is above
    chance but whose interval is not."""
    at = {"examples": 1000, "majority": 0.506}
    return [
        train("bigbird", "pathfinder", 0.494, **at),
        train("lsh", "pathfinder", 0.506, degenerate=True, **at),
        train("full-sdpa", "pathfinder", 0.61, **at),
        train("local", "pathfinder", 0.60, **at),
        train("linear", "pathfinder", 0.52, **at), train("linear", "pathfinder", 0.56, seed=1, **at),
    ]


def test_every_cell_has_its_interval_and_at_chance_cells_are_marked(tmp_path: Path):
    table = accuracy_frame(write(tmp_path / "runs", *chance_runs()))
    cells = table.frame["pathfinder"]
    # one seed: the Wilson interval over 1000 examples (by hand: centre 0.49403, half-width 0.03093)
    assert cells["bigbird"] == "49.40 [46.3, 52.5] (chance)"
    assert cells["lsh"] == "50.60 [47.5, 53.7] (chance)†"
    assert cells["full-sdpa"] == "61.00 [57.9, 64.0]"  # its interval is above 50.6: not at chance
    # two seeds: the t interval of the mean, 54 ± 12.706 * 2.828 / sqrt(2) = 54 ± 25.4: at chance
    assert cells["linear"] == "54.00 ± 2.83 (2) [28.6, 79.4] (chance)"
    notes = " ".join(table.notes)
    assert "(chance): not significantly above chance" in notes and "†: a run gave one class" in notes


def test_the_report_says_which_rows_the_best_is_not_told_apart_from(tmp_path: Path):
    table = accuracy_frame(write(tmp_path / "runs", *chance_runs()))
    [note] = [note for note in table.notes if note.startswith("pathfinder: the best row")]
    # 61 vs 60 over 1000 examples each: a difference of 1 against a noise of about 4.3 points; the
    # shorter list is named (2 rows tied, 2 apart)
    assert note == ("pathfinder: the best row, full-sdpa (61.00), is within noise of linear, local; "
                    "the other rows are below it by more than the noise.")
    most = accuracy_frame(write(tmp_path / "most", *chance_runs(), train("star", "pathfinder", 0.59, examples=1000)))
    assert ("pathfinder: the best row, full-sdpa (61.00), is within noise of every other row but bigbird, lsh, "
            "which are below it by more than the noise.") in most.notes
    alone = accuracy_frame(write(tmp_path / "apart", train("full-sdpa", "pathfinder", 0.61, examples=1000),
                                 train("bigbird", "pathfinder", 0.49, examples=1000)))
    assert "pathfinder: the best row, full-sdpa (61.00), is ahead of every other row by more than the noise." in \
        alone.notes


def test_at_chance_reaches_every_output(tmp_path: Path):
    runs = write(tmp_path / "runs", *chance_runs(), *[bench(model, 1024, steps=5, memory=9, task="text")
                                                       for model in ("bigbird", "full-sdpa")])
    paths = write_report(load_records(runs), tmp_path / "out")
    assert "49.40 [46.3, 52.5] (chance)" in paths["leaderboard.md"].read_text()
    assert "49.40 [46.3, 52.5] (chance)" in paths["leaderboard.html"].read_text()
    tidy = pd.read_csv(paths["leaderboard.csv"])
    accuracy = tidy[(tidy["table"] == "accuracy") & (tidy["task"] == "pathfinder")].set_index("model")
    assert accuracy.loc["bigbird", "at_chance"] == True  # noqa: E712  (read back from the csv)
    assert accuracy.loc["full-sdpa", "at_chance"] == False  # noqa: E712
    assert accuracy.loc["bigbird", ["ci_low", "ci_high"]].tolist() == pytest.approx([46.31, 52.50], abs=0.01)
    assert accuracy.loc["lsh", "degenerate"] == True and accuracy.loc["local", "ties_best"] == True  # noqa: E712
    summary = summarise(load_records(runs))
    [ax] = bubble_plot(summary.accuracy, summary.efficiency, "cpu").axes
    assert sorted(text.get_text() for text in ax.texts) == ["bigbird *", "full-sdpa"]
    assert "*: at chance on at least one task" in ax.get_title()


def test_interval_arithmetic():
    low, high = wilson(0.0, 50)
    assert low == 0 and high == pytest.approx(0.0713, abs=1e-4)  # never below 0, unlike the normal interval
    assert t_quantile(1) == 12.706 and t_quantile(30) == 2.042
    assert t_quantile(60) == pytest.approx(2.000, abs=1e-3) and t_quantile(10**6) == pytest.approx(1.960, abs=1e-3)


def test_older_records_are_read_as_the_current_schema_without_changing_them():
    schema_1 = {"schema": 1, "kind": "train", "batch_size": 8,
                "config": {"model": {"dim": 8}, "trainer": {"batch_size": 8}}}
    read = upgraded(schema_1)
    assert read["techniques"] == () and read["precision"] == "fp32" and read["compression"] is None
    assert read["protocol"] == "clean" and read["config"]["protocol"]["name"] == "clean"
    model = read["config"]["model"]
    assert model["dim"] == 8 and model["encoder"] == {"share_layers": False, "embed_dim": None, "reversible": False}
    assert (model["init"], model["padding_mask"], model["dual_head"]) == ("torch", "real", "nli")
    assert model["qkv_dim"] is None
    assert read["config"]["trainer"] == {"batch_size": 8, "accumulate": 1, "test_checkpoint": "best"}
    assert read["batch_size"] == 8 and "task" not in read["config"]
    assert read["config"]["hardware"] == {"matmul_precision": "highest"} and "bench" not in read["config"]
    text = upgraded({**schema_1, "task": "text"})["config"]["task"]
    assert text == {"val_fraction": None, "split_seed": 0}  # validated on its test split
    assert upgraded({**schema_1, "kind": "bench"})["config"]["bench"] == {"padding": "none"}  # unpadded inputs
    assert schema_1["config"] == {"model": {"dim": 8}, "trainer": {"batch_size": 8}}  # the record read is untouched
    schema_2 = {"schema": 2, "kind": "train", "batch_size": 8,
                "config": {"trainer": {"batch_size": 8, "accumulate": 4}}}
    assert upgraded(schema_2)["batch_size"] == 32 and upgraded(schema_2)["config"]["trainer"]["batch_size"] == 32
    assert schema_2["config"]["trainer"]["batch_size"] == 8
    current = {**schema_2, "schema": SCHEMA}
    assert upgraded(current)["batch_size"] == 8 and upgraded(current)["config"] is current["config"]
