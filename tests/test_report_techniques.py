"""The report of model-level techniques: row labels, ratios to the right baseline, the techniques
and sparsity tables, and their cells in leaderboard.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lra.report import (
    Group, accuracy_tables, crossover_table, efficiency_tables, load_records, summarise, techniques_tables,
    write_report,
)
from tests.report_fixtures import bench, compress, sample_runs, train, write

PERFORMER = "performer-softmax-random"
FIGURES_VS_BASE = ["test_accuracy_vs_base", "steps_per_s_vs_base", "weights_mb_vs_base"]


def load(tmp_path: Path, *records: dict) -> pd.DataFrame:
    return load_records(write(tmp_path / "runs", *records))


def measured(record: dict, **metrics: float) -> dict:
    """`record` with these metrics in place of the fixture's."""
    record["metrics"].update(metrics)
    return record


def test_row_labels_name_techniques_precision_and_compression_and_schema_1_reads_as_none(tmp_path: Path):
    records = load(tmp_path,
                   train(PERFORMER, "listops", 0.3, techniques=["reversible"]),
                   train("local", "listops", 0.3, techniques=["shared layers", "embed 32"], precision="fp16"),
                   train("full-sdpa", "listops", 0.4, precision="bf16"),
                   compress("full-sdpa", "listops", "pruned 50%", 0.3, precision="bf16"),
                   compress("full-sdpa", "listops", None, 0.4),
                   train("linformer", "listops", 0.3))
    assert records["schema"].tolist() == [2, 2, 2, 2, 2, 1]
    assert records["model"].tolist() == [
        f"{PERFORMER} + reversible", "local + shared layers + embed 32 + fp16", "full-sdpa + bf16",
        "full-sdpa + bf16 + pruned 50%", "full-sdpa", "linformer"]
    assert records["variant"].tolist() == [PERFORMER, "local", "full-sdpa", "full-sdpa", "full-sdpa", "linformer"]
    assert records["base_model"].tolist()[2:5] == ["full-sdpa + bf16", "full-sdpa + bf16", "full-sdpa"]
    old = records.iloc[-1]
    assert old["techniques"] == [] and old["precision"] == "fp32" and pd.isna(old["compression"])


def technique_benches() -> list[dict]:
    """Training steps at 512 tokens: plain and fused attention and performer in fp32, performer with
    reversible layers, and all three again in bf16."""
    return [
        bench("full-math", 512, steps=10, memory=100), bench("full-sdpa", 512, steps=20, memory=50),
        bench(PERFORMER, 512, steps=30, memory=40), bench(PERFORMER, 512, steps=24, memory=20, techniques=["reversible"]),
        bench("full-math", 512, steps=16, memory=60, precision="bf16"),
        bench("full-sdpa", 512, steps=40, memory=30, precision="bf16"),
        bench(PERFORMER, 512, steps=48, memory=24, precision="bf16"),
    ]


def test_efficiency_ratios_of_technique_rows_are_to_full_attention_alone_at_the_same_precision(tmp_path: Path):
    summary = summarise(load(tmp_path, *technique_benches()))
    cells = summary.efficiency.set_index("model")
    ratios = ["speed_vs_plain", "speed_vs_fused", "memory_vs_plain", "memory_vs_fused"]
    assert cells.loc[f"{PERFORMER} + reversible", ratios].tolist() == pytest.approx([24 / 10, 24 / 20, 20 / 100, 20 / 50])
    assert cells.loc[f"{PERFORMER} + bf16", ratios].tolist() == pytest.approx([48 / 16, 48 / 40, 24 / 60, 24 / 30])
    assert cells.loc["full-sdpa + bf16", ratios].tolist() == pytest.approx([40 / 16, 1.0, 30 / 60, 1.0])
    speed = efficiency_tables(summary.efficiency, Group("cpu", "text", "train", 32))[0]
    assert speed.frame.loc[f"{PERFORMER} + reversible", 512] == "24 (2.40×, 1.20×)"
    assert list(speed.frame.index[:4]) == ["full-math", "full-math + bf16", "full-sdpa", "full-sdpa + bf16"]
    crossover = crossover_table(summary.crossover, Group("cpu", "text", "train", 32)).frame
    # each row against fused attention at its own precision: performer in bf16 beats it (48 > 40)
    assert crossover.loc[f"{PERFORMER} + bf16", "speed"] == "from 512" and crossover.loc[PERFORMER, "speed"] == "from 512"
    assert crossover.loc[f"{PERFORMER} + reversible", "speed"] == "from 512"  # 24 > 20
    assert not {"full-sdpa", "full-sdpa + bf16"} & set(crossover.index)


def compress_runs() -> list[dict]:
    """Fused attention trained once, then measured by lra-compress as trained, as int8 and pruned to
    90%; a float measurement of another accuracy than its training run."""
    return [train("full-sdpa", "listops", 0.41), compress("full-sdpa", "listops", None, 0.45),
            compress("full-sdpa", "listops", "int8", 0.40), compress("full-sdpa", "listops", "pruned 90%", 0.30)]


def test_accuracy_table_has_the_compressed_rows_but_not_the_float_measurement(tmp_path: Path):
    [table] = accuracy_tables(summarise(load(tmp_path, *compress_runs())).accuracy)
    assert list(table.frame.index) == ["full-sdpa", "full-sdpa + int8", "full-sdpa + pruned 90%", "majority class"]
    assert table.frame["listops"].tolist()[:3] == ["41.00", "40.00", "30.00"]  # 41: the training run alone


def technique_runs() -> list[dict]:
    """ListOps: fused attention (two seeds) alone, reversible, in bf16 and in bf16 reversible; its
    lra-compress measurements (as trained, int8, and a pruning that failed); local alone and
    distilled; linformer without techniques; text: linformer alone (no techniques table there)."""
    return [
        measured(train("full-sdpa", "listops", 0.40), steps_per_s=10.0, peak_memory_mb=8.0),
        measured(train("full-sdpa", "listops", 0.42, seed=1), steps_per_s=12.0, peak_memory_mb=8.0),
        measured(train("full-sdpa", "listops", 0.39, techniques=["reversible"]), steps_per_s=8.8, peak_memory_mb=2.0),
        measured(train("full-sdpa", "listops", 0.41, precision="bf16"), steps_per_s=22.0, peak_memory_mb=4.0),
        measured(train("full-sdpa", "listops", 0.40, precision="bf16", techniques=["reversible"]),
                 steps_per_s=11.0, peak_memory_mb=1.0),
        compress("full-sdpa", "listops", None, 0.43, steps=40.0, memory=2.0, weights=1.0),
        compress("full-sdpa", "listops", "int8", 0.40, steps=60.0, memory=1.0, weights=0.25),
        compress("full-sdpa", "listops", "pruned 50%", None),
        train("local", "listops", 0.30), train("local", "listops", 0.33, techniques=["distilled"]),
        train("linformer", "listops", 0.35), train("linformer", "text", 0.55),
    ]


def test_techniques_table_shows_each_figure_and_its_ratio_to_the_variant_alone(tmp_path: Path):
    summary = summarise(load(tmp_path, *technique_runs()))
    table, sparsity = techniques_tables(summary.techniques, summary.sparsity)
    frame = table.frame
    assert table.title == "Model-level techniques: listops, hardware cpu (× the variant alone)"
    assert list(frame.columns) == ["test acc %", "train steps/s", "train peak MB", "infer steps/s", "infer peak MB",
                                   "weights MB"]
    assert list(frame.index) == ["full-sdpa", "full-sdpa + bf16", "full-sdpa + int8", "full-sdpa + pruned 50%",
                                 "full-sdpa + reversible", "full-sdpa + reversible + bf16", "local", "local + distilled"]
    # the base row: the mean of its two training runs, the inference figures of its float measurement
    assert frame.loc["full-sdpa"].tolist() == ["41.00 [28.3, 53.7]", "11", "8", "40", "2", "1"]
    assert frame.loc["full-sdpa + reversible"].tolist() == [
        f"39.00 ({39 / 41:.2f}×)", "8.8 (0.80×)", "2 (0.25×)", "—", "—", "—"]  # 8.8 / 11, 2 / 8
    assert frame.loc["full-sdpa + bf16", ["train steps/s", "train peak MB"]].tolist() == ["22 (2.00×)", "4 (0.50×)"]
    # reversible in bf16: over fused attention alone in bf16 (22 steps/s, 4 MB), not in fp32
    assert frame.loc["full-sdpa + reversible + bf16", ["train steps/s", "train peak MB"]].tolist() == [
        "11 (0.50×)", "1 (0.25×)"]
    assert frame.loc["full-sdpa + int8"].tolist() == [
        f"40.00 ({40 / 41:.2f}×)", "—", "—", "60 (1.50×)", "1 (0.50×)", "0.25 (0.25×)"]
    assert set(frame.loc["full-sdpa + pruned 50%"]) == {"FAIL"}
    assert frame.loc["local + distilled", "test acc %"] == f"33.00 ({33 / 30:.2f}×)"
    notes = " ".join(table.notes)
    for needle in ["int8 dynamic quantization runs on the CPU only", "live tensor bytes one step allocates",
                   "saved size of the model's weights", "OOM or FAIL"]:
        assert needle in notes
    assert sparsity.frame.loc["full-sdpa"].tolist() == ["43.00", "FAIL"]  # the failed pruning, at its level

    cells = summary.techniques.set_index("model")
    assert cells.loc["full-sdpa + int8", "weights_mb_vs_base"] == pytest.approx(0.25)
    assert cells.loc["full-sdpa", FIGURES_VS_BASE].isna().all()  # a base row has no ratio
    plain = summarise(load(tmp_path / "none", *compress_runs()[:1]))  # no technique row: no table
    assert plain.techniques.empty and techniques_tables(plain.techniques, plain.sparsity) == []


def pruning_runs() -> list[dict]:
    """Fused attention: as trained, int8, pruned to 50% and to 90% (two seeds, fine-tuned 20 and 40
    steps); performer with reversible layers: as trained and pruned to 50%."""
    performer = {"techniques": ["reversible"]}
    return [
        compress("full-sdpa", "listops", None, 0.43), compress("full-sdpa", "listops", "int8", 0.42),
        compress("full-sdpa", "listops", "pruned 50%", 0.40, sparsity=0.5),
        compress("full-sdpa", "listops", "pruned 90%", 0.30, sparsity=0.9),
        compress("full-sdpa", "listops", "pruned 90%", 0.32, sparsity=0.9, seed=1, finetune_steps=40),
        compress(PERFORMER, "listops", None, 0.35, **performer),
        compress(PERFORMER, "listops", "pruned 50%", 0.33, sparsity=0.5, **performer),
    ]


def test_sparsity_table_has_accuracy_by_pruning_level_after_the_techniques_table(tmp_path: Path):
    summary = summarise(load(tmp_path, *pruning_runs()))
    techniques, sparsity = techniques_tables(summary.techniques, summary.sparsity)
    assert techniques.title.startswith("Model-level techniques: listops")
    assert sparsity.title == "Test accuracy % vs sparsity: listops, hardware cpu"
    assert list(sparsity.frame.columns) == ["0%", "50%", "90%"]
    assert sparsity.frame.to_dict("index") == {
        "full-sdpa": {"0%": "43.00", "50%": "40.00", "90%": "31.00 ± 1.41 (2) [18.3, 43.7]"},
        f"{PERFORMER} + reversible": {"0%": "35.00", "50%": "33.00", "90%": "—"},
    }
    assert "global magnitude pruning" in sparsity.notes[0] and "20 to 40 fine-tuning steps" in sparsity.notes[0]
    one_run = summarise(load(tmp_path / "one", *pruning_runs()[:3]))
    assert "then 20 fine-tuning steps" in techniques_tables(one_run.techniques, one_run.sparsity)[1].notes[0]


def test_report_files_hold_the_techniques_section_and_the_csv_its_cells(tmp_path: Path):
    paths = write_report(load_records(sample_runs(tmp_path / "runs")), tmp_path / "out")
    md, page = paths["leaderboard.md"].read_text(), paths["leaderboard.html"].read_text()
    for heading in ["Model-level techniques", "Test accuracy % vs sparsity: listops, hardware cpu"]:
        assert heading in md and heading in page
    assert md.index("## Model-level techniques") > md.index("## Efficiency (LRA Table 2)")
    tidy = pd.read_csv(paths["leaderboard.csv"])
    weights = tidy[(tidy["table"] == "techniques") & (tidy["model"] == "full-sdpa + int8")
                   & (tidy["metric"] == "weights_mb_vs_base")]
    assert weights["value"].item() == pytest.approx(0.25) and weights["note"].item() == "over full-sdpa"
    accuracy = tidy[(tidy["table"] == "techniques") & (tidy["metric"] == "test_accuracy_pct")]
    assert dict(zip(accuracy["model"], accuracy["value"])) == pytest.approx(
        {"full-sdpa": 41.0, "full-sdpa + int8": 40.0, "full-sdpa + pruned 50%": 38.0, "full-sdpa + reversible": 43.0})
    pruned = tidy[tidy["table"] == "sparsity"]
    assert dict(zip(pruned["note"], pruned["value"])) == pytest.approx({"sparsity 0%": 41.0, "sparsity 50%": 38.0})
    assert set(pruned["model"]) == {"full-sdpa"}
