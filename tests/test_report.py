"""lra-report: records in; accuracy, efficiency and crossover tables, plots and files out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lra.errors import LRAError
from lra.report import (
    FUSED, PLAIN, Group, accuracy_tables, bubble_plot, crossover_table, efficiency_tables, load_records, scaling_plot,
    summarise, write_report,
)
from lra.report.cells import ordered_tasks
from tests.conftest import REPO, compose_config, run_cli, run_main
from tests.report_fixtures import bench, sample_runs, train, write

PNG = b"\x89PNG\r\n\x1a\n"
TEXT_TRAIN = Group("cpu", "text", "train", 32)


def load(tmp_path: Path, *records: dict) -> pd.DataFrame:
    return load_records(write(tmp_path / "runs", *records))


def accuracy_runs() -> list[dict]:
    """Two seeds of plain attention, one of fused (no text run), one ok and one diverged seed of
    linformer, and lsh, whose every seed failed on ListOps."""
    return [
        train("full-math", "listops", 0.40), train("full-math", "listops", 0.42, seed=1),
        train("full-math", "text", 0.60),
        train("full-sdpa", "listops", 0.41),
        train("linformer", "listops", 0.30), train("linformer", "listops", None, seed=1),
        train("linformer", "text", 0.55),
        train("lsh", "listops", None), train("lsh", "listops", None, seed=1, status="oom"),
    ]


def test_accuracy_table_cells_and_recomputed_average(tmp_path: Path):
    [table] = accuracy_tables(summarise(load(tmp_path, *accuracy_runs())).accuracy)
    frame = table.frame
    assert "cpu" in table.title
    assert list(frame.columns) == ["listops", "text", "avg"]
    assert list(frame.index) == ["full-math", "full-sdpa", "linformer", "lsh", "majority class"]
    # two seeds: the t interval of their mean, 41 ± 12.706 * 1.414 / sqrt(2); one seed of a record that does not
    # say how many test examples it scored: no interval (and so none for the average)
    assert frame.loc["full-math"].tolist() == ["41.00 ± 1.41 (2) [28.3, 53.7]", "60.00", "50.50"]
    assert frame.loc["full-sdpa"].tolist() == ["41.00", "—", "—"]  # no text number: no average
    assert frame.loc["linformer"].tolist() == ["30.00 (1, 1 FAIL)", "55.00", "42.50"]
    assert frame.loc["lsh"].tolist() == ["FAIL", "—", "—"]
    assert frame.loc["majority class"].tolist() == ["14.00", "50.00", "32.00"]
    assert any(note.startswith("avg: mean over listops, text, the tasks where at least one of our rows has a number;")
               for note in table.notes)
    assert "No avg for full-sdpa: no number for text." in table.notes


def test_tasks_in_lra_order_then_alphabetical_and_one_table_per_hardware(tmp_path: Path):
    assert ordered_tasks(["zeta", "pathx", "alpha", "listops"]) == ["listops", "pathx", "alpha", "zeta"]
    records = load(tmp_path, train("local", "text", 0.5), train("local", "listops", 0.2, hardware="h200"))
    tables = accuracy_tables(summarise(records).accuracy)
    columns = [(table.title.split()[-1], list(table.frame.columns)) for table in tables]
    assert columns == [("cpu", ["text", "avg"]), ("h200", ["listops", "avg"])]


def test_reference_rows_are_shown_but_never_enter_our_averages_or_ratios(tmp_path: Path):
    records = load(tmp_path, *accuracy_runs(), *efficiency_runs())
    plain, published = summarise(records), summarise(records, reference="lra_paper")
    [table] = accuracy_tables(published.accuracy)
    [ours] = accuracy_tables(plain.accuracy)
    transformer = table.frame.loc["Transformer (LRA paper)"]
    assert transformer["pathx"] == "FAIL" and transformer["retrieval"] == "57.46"
    assert transformer["avg"] == f"{(36.37 + 64.27) / 2:.2f}"  # over our averaged tasks only
    assert table.frame.loc[ours.frame.index, ["listops", "text", "avg"]].equals(ours.frame)
    assert table.frame.loc["linformer", "retrieval"] == "—"

    cells = published.efficiency
    reference = cells[cells["source"] != "ours"]
    assert set(reference["mode"]) == {"train"} and set(reference["task"]) == {"text"}
    local = reference[reference["model"].eq("Local (LRA paper, 4x4 TPU v3, batch 32)") & reference["seq_len"].eq(4096)]
    assert local["speed_vs_plain"].item() == pytest.approx(7.4 / 1.4)
    assert local["peak_memory_mb"].item() == pytest.approx(1.37 * 1024)
    assert local["speed_vs_fused"].isna().all()
    ours_only = cells[cells["source"] == "ours"].reset_index(drop=True)
    pd.testing.assert_frame_equal(ours_only, plain.efficiency.reset_index(drop=True), check_dtype=False)
    assert published.crossover.equals(plain.crossover)
    speed = efficiency_tables(cells, TEXT_TRAIN)[0]
    assert speed.frame.loc["Transformer (LRA paper, 4x4 TPU v3, batch 32)", 1024] == "8.1 (1.00×, —)"


def test_unknown_reference_names_the_known_ones(tmp_path: Path):
    with pytest.raises(LRAError, match=r"^report.reference: unknown reference 'x'; known: lra_paper$"):
        summarise(load(tmp_path, train("local", "text", 0.5)), reference="x")


def efficiency_runs() -> list[dict]:
    """Text-task training steps at 512 and 1024 tokens: plain attention out of memory at 1024,
    linformer measured twice at 512, local failed at 1024 and skipped at 2048; one inference row."""
    return [
        bench("full-math", 512, steps=10, memory=100, tflops=0.1, matmul_tflops=0.5, peak_rss_mb=900),
        bench("full-math", 1024, status="oom"),
        bench("full-sdpa", 512, steps=20, memory=50, tflops=0.2, matmul_tflops=0.5),
        bench("full-sdpa", 1024, steps=8, memory=200),
        bench("linformer", 512, steps=14, memory=40), bench("linformer", 512, steps=16, memory=40),
        bench("linformer", 1024, steps=12, memory=60),
        bench("local", 512, steps=30, memory=45), bench("local", 1024, status="failed"),
        bench("local", 2048, status="skipped"),
        bench("linformer", 512, steps=50, memory=10, mode="infer"),
    ]


def test_efficiency_ratios_against_both_full_attention_forms(tmp_path: Path):
    cells = summarise(load(tmp_path, *efficiency_runs())).efficiency
    linformer = cells[(cells["model"] == "linformer") & (cells["mode"] == "train")].set_index("seq_len")
    assert linformer.loc[512, ["steps_per_s", "n"]].tolist() == [15, 2]  # the mean of repeats
    assert linformer.loc[512, ["speed_vs_plain", "speed_vs_fused"]].tolist() == pytest.approx([1.5, 0.75])
    assert linformer.loc[512, ["memory_vs_plain", "memory_vs_fused"]].tolist() == pytest.approx([0.4, 0.8])
    assert pd.isna(linformer.loc[1024, "speed_vs_plain"]) and linformer.loc[1024, "speed_vs_fused"] == 1.5

    speed, memory, tflops, rss = efficiency_tables(cells, TEXT_TRAIN)
    assert speed.frame.loc["linformer"].tolist() == ["15 (1.50×, 0.75×)", "12 (—, 1.50×)", ""]
    assert speed.frame.loc["full-math"].tolist() == ["10 (1.00×, 0.50×)", "OOM", ""]
    assert speed.frame.loc["local"].tolist() == ["30 (3.00×, 1.50×)", "FAIL", "skip"]
    assert memory.frame.loc["full-sdpa"].tolist() == ["50 (0.50×, 1.00×)", "200 (—, 1.00×)", ""]
    assert "live tensor bytes" in memory.title
    assert tflops.frame.loc["full-sdpa", 512] == "0.2 / 0.5" and list(tflops.frame.index) == ["full-math", "full-sdpa"]
    assert "whole process" in rss.title and rss.frame.loc["full-math", 512] == "900"
    infer = efficiency_tables(cells, Group("cpu", "text", "infer", 32))[0]
    assert infer.frame.loc["linformer", 512] == "50 (—, —)"  # no full attention measured there


def test_the_baselines_are_the_names_runs_of_both_full_attention_forms_record():
    names = [compose_config(f"model={model}", config="bench").model.name for model in ("full_math", "full")]
    assert names == [PLAIN, FUSED]


def crossover_runs() -> list[dict]:
    """Fused attention out of memory at 4096. zigzag: faster at 256, slower at 512, faster from 1024
    on, and less memory everywhere; late: slower wherever fused attention runs; never: slower, and
    out of memory at 4096 too."""
    fused = {256: 100, 512: 50, 1024: 20, 2048: 5}
    rows = [bench("full-sdpa", n, steps=s, memory=n) for n, s in fused.items()]
    rows += [bench("full-sdpa", 4096, status="oom")]
    zigzag = {256: 120, 512: 40, 1024: 25, 2048: 6, 4096: 1}
    rows += [bench("zigzag", n, steps=s, memory=n / 2) for n, s in zigzag.items()]
    rows += [bench("late", n, steps=fused.get(n, 2) / 2, memory=2 * n) for n in [256, 512, 1024, 2048, 4096]]
    rows += [bench("never", n, steps=fused[n] / 2, memory=n / 2) for n in fused] + [bench("never", 4096, status="oom")]
    return rows


def test_crossover_with_fused_attention(tmp_path: Path):
    table = crossover_table(summarise(load(tmp_path, *crossover_runs())).crossover, TEXT_TRAIN)
    assert table.frame.to_dict("index") == {
        "zigzag": {"speed": "from 1024", "memory": "from 256"},
        "late": {"speed": "from 4096", "memory": "from 4096"},  # runs where fused attention ran out of memory
        "never": {"speed": "none", "memory": "none"},  # smaller, but out of memory at the longest length
    }


def test_plots_have_one_series_per_model_and_the_bubble_chart_uses_the_average(tmp_path: Path):
    summary = summarise(load_records(sample_runs(tmp_path / "runs")))
    throughput = scaling_plot(summary.efficiency, TEXT_TRAIN, "tokens_per_s")
    [ax] = throughput.axes
    assert {line.get_label(): len(line.get_xdata()) for line in ax.get_lines()} == {
        "full-math": 2, "full-sdpa": 3, "linformer": 3, "local": 3}  # the OOM length has no point
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert "tokens/s" in ax.get_ylabel() and "cpu" in ax.get_title() and "train" in ax.get_title()
    assert "live tensor bytes" in scaling_plot(summary.efficiency, TEXT_TRAIN, "peak_memory_mb").axes[0].get_ylabel()

    [ax] = bubble_plot(summary.accuracy, summary.efficiency, "cpu").axes
    assert sorted(text.get_text() for text in ax.texts) == ["full-sdpa", "linformer"]  # full-math: OOM at 4096
    offsets = ax.collections[0].get_offsets()
    assert sorted(offsets[:, 1].tolist()) == pytest.approx([42.5, 51.5])  # the avg of each row
    assert "4096 tokens" in ax.get_xlabel() and "longest" not in ax.get_xlabel()

    for lengths, label in [((512, 1024), "at 1024 tokens, the longest measured"), ((4096, 8192), "at 4096 tokens (")]:
        runs = write(tmp_path / str(lengths), train("local", "text", 0.5), *(bench("local", n, 3, 9) for n in lengths))
        other = summarise(load_records(runs))
        assert label in bubble_plot(other.accuracy, other.efficiency, "cpu").axes[0].get_xlabel()


def test_write_report_files_embed_the_plots_and_the_csv_holds_every_cell(tmp_path: Path):
    paths = write_report(load_records(sample_runs(tmp_path / "runs")), tmp_path / "out", reference="lra_paper")
    plots = ["plots/throughput_cpu_text_train.png", "plots/memory_cpu_text_train.png", "plots/bubble_cpu.png"]
    assert sorted(paths) == sorted(["leaderboard.md", "leaderboard.html", "leaderboard.csv", *plots])
    for plot in plots:
        assert paths[plot].read_bytes().startswith(PNG)
    md, page = paths["leaderboard.md"].read_text(), paths["leaderboard.html"].read_text()
    for plot in plots:
        assert f"]({plot})" in md and f'src="{plot}"' in page
    for heading in ["Accuracy (LRA Table 1)", "Efficiency (LRA Table 2)", "Crossover", "LRA Figure 3"]:
        assert heading in md and heading in page
    assert "| Transformer (LRA paper) " in md and "<td>41.00</td>" in page
    assert not list((tmp_path / "out").glob("**/.*.tmp"))

    tidy = pd.read_csv(paths["leaderboard.csv"])
    assert set(tidy["table"]) == {"accuracy", "efficiency", "crossover", "techniques", "sparsity"}
    cell = tidy[(tidy["model"] == "linformer") & (tidy["seq_len"] == 2048) & (tidy["metric"] == "speed_vs_fused")]
    assert cell["value"].item() == pytest.approx(0.75)
    oom = tidy[(tidy["model"] == "full-math") & (tidy["seq_len"] == 4096)]
    assert set(oom["metric"]) == {"steps_per_s", "peak_memory_mb"} and set(oom["status"]) == {"oom"}
    avg = tidy[(tidy["task"] == "avg") & (tidy["model"] == "linformer")]
    assert avg["value"].item() == pytest.approx(42.5) and avg["note"].item() == "mean over listops, text"


def test_malformed_records_and_empty_dirs_are_named(tmp_path: Path):
    write(tmp_path / "runs" / "a", train("full-sdpa", "text", 0.4))
    with (tmp_path / "runs" / "a" / "records.jsonl").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(LRAError, match=r"a/records.jsonl:2: not a JSON record"):
        load_records(tmp_path / "runs")
    foreign = {"schema": 1, "kind": "train", "model": "x"}
    (tmp_path / "runs" / "a" / "records.jsonl").write_text(json.dumps(foreign) + "\n")
    with pytest.raises(LRAError, match=r"a/records.jsonl:1: not a run record \(missing: task, hardware, seed,"):
        load_records(tmp_path / "runs")
    with pytest.raises(LRAError, match="no records.jsonl found"):
        load_records(tmp_path / "empty")


def test_cli_writes_the_report_and_bad_input_is_one_line_with_nothing_written(tmp_path: Path):
    runs = sample_runs(tmp_path / "runs")
    result = run_main("runners.report", f"runs={runs}", f"out={tmp_path / 'out'}", "reference=lra_paper")
    assert result.returncode == 0, result.stderr
    assert "| linformer " in result.stdout and (tmp_path / "out" / "leaderboard.html").exists()

    # bad input as a user sees it: from a process of its own, one line and nothing else
    result = run_cli("runners.report", f"runs={runs}", f"out={tmp_path / 'bad'}", "reference=x", cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip() == "lra-report: error: report.reference: unknown reference 'x'; known: lra_paper"
    assert not (tmp_path / "bad" / "leaderboard.md").exists()


def test_the_report_reads_records_only():
    code = ("import sys, lra.report, lra.sweep; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'models', 'tasks', 'runners', 'lra'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "['lra']", result.stderr  # never the models, tasks or runners
