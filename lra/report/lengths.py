"""Accuracy against length: per hardware and task trained at two lengths or more, each row's test
accuracy % at each length, its 95% interval and chance mark as in the accuracy table
(lra.report.accuracy, lra.report.uncertainty), beside the training throughput and peak memory that
the same runs measured. Rows are named by `length_model` (lra.report.load): the runs of one setup at
several lengths form one row.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from lra.report.accuracy import AT_CHANCE, DEGENERATE, MAJORITY, accuracy_text, tested_cells, tie_note, with_ties
from lra.report.cells import OURS, sort_models
from lra.report.curves import CHANCE_STYLE
from lra.report.plots import axis_label, legend_below, length_axis, look
from lra.report.table import MISSING, Table
from lra.report.uncertainty import INTERVAL

FIGURES = ["tokens_per_s", "peak_memory_mb"]  # plotted beside accuracy, from the same training runs
COLUMNS = ["hardware", "task", "model", "seq_len", "value", "std", "n", "failed", "status", "examples", "majority",
           *INTERVAL, "degenerate", "ties_best", *FIGURES, "memory_measure"]


def length_cells(records: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy % (as the accuracy table's cells), tokens/s and peak memory per hardware, task, row and
    length, over seeds, from the training runs of each hardware and task trained at two lengths or more."""
    train = records[records["kind"] == "train"]
    train = train[train.groupby(["hardware", "task"])["seq_len"].transform("nunique") >= 2]
    if train.empty:
        return pd.DataFrame(columns=COLUMNS)
    figures = {name: (name, "mean") for name in FIGURES} | {"memory_measure": ("memory_measure", "joined")}
    cells = tested_cells(train.assign(model=train["length_model"]), ["hardware", "task", "model", "seq_len"], figures)
    cells = with_ties(cells, by=("hardware", "task", "seq_len"))
    return sort_models(cells.sort_values("seq_len", kind="stable")).reindex(columns=COLUMNS).reset_index(drop=True)


def length_tidy(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per cell for its accuracy (with its interval; a failed cell without a value, for its
    status), and one per figure beside it; the note of a memory row says what was measured."""
    accuracy = cells.assign(metric="test_accuracy_pct")
    ids = ["hardware", "task", "model", "seq_len", "n", "failed", "status", "memory_measure"]
    figures = cells[ids + FIGURES].melt(id_vars=ids, var_name="metric").dropna(subset=["value"])
    figures["note"] = figures.pop("memory_measure").where(figures["metric"] == "peak_memory_mb")
    return pd.concat([accuracy, figures], ignore_index=True).assign(table="accuracy_vs_length", source=OURS)


def length_table(cells: pd.DataFrame) -> Table:
    """Test accuracy % of each row (rows) at each length (columns), and the majority-class rate, for
    the cells of one hardware and task."""
    frame = (cells.assign(text=cells.apply(accuracy_text, axis=1))
             .pivot(index="model", columns="seq_len", values="text")
             .reindex(index=cells["model"].unique(), columns=sorted(cells["seq_len"].unique())).fillna(MISSING))
    majority = cells.groupby("seq_len")["majority"].mean()
    frame.loc[MAJORITY] = majority.reindex(frame.columns).map(lambda rate: MISSING if pd.isna(rate) else f"{rate:.2f}")
    frame.columns.name, frame.index.name = None, "model"
    hardware, task = cells[["hardware", "task"]].iloc[0]
    ties = [tie_note(at_length, f"{length} tokens") for length, at_length in cells.groupby("seq_len")]
    return Table(f"Test accuracy % by sequence length: {task}, hardware {hardware}", frame,
                 length_notes() + [note for note in ties if note])


def length_notes() -> list[str]:
    """How to read an accuracy-by-length table."""
    return [
        "Columns: the task's length (task.max_len, tokens per sequence). Rows: the runs of one setup at each "
        "length (its name leaves out the keys that state the length).",
        "Cells as in the accuracy table: test accuracy % over the whole test split, mean ± sample std over seeds "
        f"(seeds), [low, high] its 95% interval, {AT_CHANCE} where that interval reaches the majority-class rate of "
        f"the same test examples, {DEGENERATE} where a run gave one class to nearly every example; OOM or FAIL: no "
        f"run gave a number. {MAJORITY}: the majority-class rate of the test split at that length.",
        "The plot beside it: these accuracies with their intervals, and the training throughput and peak memory of "
        "the same runs, on this hardware.",
    ]


def length_plot(cells: pd.DataFrame) -> Figure:
    """Test accuracy % against length with its 95% intervals and chance dashed, beside training throughput
    and peak memory against the same lengths, a line per row, for the cells of one hardware and task."""
    ok = cells[cells["status"] == "ok"]
    fig = Figure(figsize=(14, 4.5), layout="constrained")
    accuracy, speed, memory = fig.subplots(1, 3)
    for index, (model, line) in enumerate(ok.groupby("model", sort=False)):
        line = line.sort_values("seq_len")
        bars = [(line["value"] - line["ci_low"]).fillna(0), (line["ci_high"] - line["value"]).fillna(0)]
        accuracy.errorbar(line["seq_len"], line["value"], yerr=bars, capsize=3, label=model, **look(index))
        speed.plot(line["seq_len"], line["tokens_per_s"], **look(index))
        memory.plot(line["seq_len"], line["peak_memory_mb"], **look(index))
    chance = cells.groupby("seq_len")["majority"].mean().dropna()
    accuracy.plot(chance.index, chance.to_numpy(), **CHANCE_STYLE)
    accuracy.set(ylabel="test accuracy (%)", title="Test accuracy, 95% intervals")
    speed.set(yscale="log", ylabel=axis_label(ok, "tokens_per_s"), title="Training throughput")
    memory.set(yscale="log", ylabel=axis_label(ok, "peak_memory_mb"), title="Training peak memory")
    for ax in (accuracy, speed, memory):
        length_axis(ax, cells["seq_len"])
    hardware, task = cells[["hardware", "task"]].iloc[0]
    fig.suptitle(f"Against length: {task}, hardware {hardware}")
    legend_below(fig, accuracy)
    return fig
