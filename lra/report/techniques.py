"""Model-level techniques: each attention variant beside its rows with techniques (shared layers,
reversible layers, accumulation, distillation), mixed precision or compression (int8, pruning),
every figure also as a ratio to the variant alone; and test accuracy against pruning sparsity.

Training figures come from lra-train's records, inference figures and weight sizes from
lra-compress's, which measures a trained model (compression None) and its compressed forms in
one job, on the CPU.
"""

from __future__ import annotations

import re

import pandas as pd

from lra.memory import MEASURES
from lra.report.accuracy import AT_CHANCE, accuracy_text, interval_text, marks_text, tested_cells
from lra.report.cells import FP32, OURS, aggregate, label, ordered_tasks, sort_models
from lra.report.table import MISSING, Table, number, ratio, status_text
from lra.report.uncertainty import INTERVAL

KINDS = ("train", "compress")  # the records of the techniques table
ACCURACY = "test_accuracy"
# Columns of the techniques table: its title, then the figure of the cells shown there.
COLUMNS = {"test acc %": ACCURACY, "train steps/s": "steps_per_s", "train peak MB": "peak_memory_mb",
           "infer steps/s": "infer_steps_per_s", "infer peak MB": "infer_peak_memory_mb", "weights MB": "weights_mb"}
FIGURES = list(COLUMNS.values())
KEYS = ["hardware", "task", "variant", "precision", "protocol", "model"]
CELLS = [*KEYS, "base", "n", "failed", "status", *FIGURES, *(f"{figure}_vs_base" for figure in FIGURES),
         *INTERVAL, "degenerate", "train_measure", "infer_measure"]
# What a techniques cell takes from the accuracy cell of the same row: how sure its accuracy is.
SURENESS = ["hardware", "task", "model", *INTERVAL, "degenerate"]
PRUNED = re.compile(r"pruned (\d+(?:\.\d+)?)%")  # the compression of a pruned model: f"pruned {sparsity:.0%}"
SPARSITY = ["hardware", "task", "base_model", "sparsity", "value", "std", "n", "failed", "status", "examples",
            "majority", *INTERVAL, "degenerate", "finetune_min", "finetune_max"]


def by_kind(records: pd.DataFrame, metric: str) -> dict[str, pd.Series]:
    """`metrics.<metric>` as one column per kind of record (`metrics.train_<metric>`, ...): the
    two kinds measure different things under one name (a training run, or the model it made)."""
    values = records.get(f"metrics.{metric}", pd.Series(float("nan"), index=records.index))
    return {f"metrics.{kind}_{metric}": values.where(records["kind"] == kind) for kind in KINDS}


def base_label(cell: pd.Series) -> str:
    """The row a technique row is compared with: its variant alone at the same precision (and in
    the same setup, where runs of a name differ in more than the seed), so only the technique
    differs; a row that differs from its variant by precision alone: the variant in fp32."""
    alone = label(cell["variant"], (), cell["precision"], setup=cell["setup"], protocol=cell["protocol"])
    return alone if cell["model"] != alone else label(cell["variant"], setup=cell["setup"], protocol=cell["protocol"])


def techniques_cells(records: pd.DataFrame, accuracy: pd.DataFrame) -> pd.DataFrame:
    """Per hardware, task and row of a variant that has technique rows: accuracy % (its training
    runs, else its lra-compress measurements; with the interval and chance mark of its cell in
    `accuracy`, the accuracy_cells), training and inference speed and memory, weights MB, each
    over seeds, and each figure's ratio to the row's base (`base_label`)."""
    rows = records[records["kind"].isin(KINDS)]
    if rows.empty:
        return pd.DataFrame(columns=CELLS)
    rows = rows.assign(**by_kind(rows, ACCURACY), **by_kind(rows, "memory_measure"))
    figures = {name: (name, "mean") for name in FIGURES if name != ACCURACY} | {
        "train_accuracy": ("train_test_accuracy", "mean"), "compress_accuracy": ("compress_test_accuracy", "mean"),
        "train_measure": ("train_memory_measure", "joined"), "infer_measure": ("compress_memory_measure", "joined")}
    cells = aggregate(rows, [*KEYS, "setup"], figures)
    cells[ACCURACY] = 100 * cells.pop("train_accuracy").fillna(cells.pop("compress_accuracy"))
    cells["base"] = cells.apply(base_label, axis=1)
    varied = cells["model"].ne(cells["base"]).groupby([cells["hardware"], cells["task"], cells["variant"]])
    order = ordered_tasks(cells["task"])
    cells = sort_models(with_base_ratios(cells[varied.transform("any")]))
    sureness = accuracy.loc[accuracy["source"].eq(OURS), SURENESS]
    cells = cells.merge(sureness, on=["hardware", "task", "model"], how="left").set_index(cells.index)
    cells = cells.sort_values("task", key=lambda tasks: tasks.map(order.index), kind="stable")
    return cells.reindex(columns=CELLS).reset_index(drop=True)


def with_base_ratios(cells: pd.DataFrame) -> pd.DataFrame:
    """`cells` with each figure of a technique row over that of its base row (`<figure>_vs_base`)."""
    base = cells[["hardware", "task", "model", *FIGURES]].rename(columns={"model": "base"})
    keys = ["hardware", "task", "base"]
    aligned = cells[keys].merge(base, on=keys, how="left").set_index(cells.index)
    technique = cells["model"].ne(cells["base"])  # a base row has no ratio
    return cells.assign(**{f"{figure}_vs_base": (cells[figure] / aligned[figure]).where(technique)
                           for figure in FIGURES})


def techniques_tidy(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per figure and ratio of each techniques cell (a failed cell: its accuracy row,
    without a value, for its status); a ratio's note names the row it is over."""
    ratios = [f"{figure}_vs_base" for figure in FIGURES]
    sureness = [*INTERVAL, "degenerate"]
    tidy = cells.melt(id_vars=["hardware", "task", "model", "base", "n", "failed", "status", *sureness],
                      value_vars=[*FIGURES, *ratios], var_name="metric")
    tidy = tidy[tidy["value"].notna() | (tidy["status"].ne("ok") & tidy["metric"].eq(ACCURACY))]
    tidy[sureness] = tidy[sureness].where(tidy["metric"].eq(ACCURACY), axis=0)  # of the accuracy alone
    note = ("over " + tidy["base"]).where(tidy["metric"].isin(ratios))
    metric = tidy["metric"].replace(ACCURACY, "test_accuracy_pct")  # a percentage, as in the accuracy table
    return tidy.drop(columns="base").assign(table="techniques", source=OURS, metric=metric, note=note)


def technique_text(cell: pd.Series, figure: str) -> str:
    """A figure, then its ratio to the base row unless this is one (`12.3 (0.81×)`); an accuracy
    with its interval and chance mark as in the accuracy table (`31.80 [28.9, 34.8] (1.01×) (chance)`)."""
    if pd.isna(cell[figure]):
        return MISSING
    accuracy = figure == ACCURACY
    text = f"{cell[figure]:.2f}{interval_text(cell)}" if accuracy else number(cell[figure])
    if cell["model"] != cell["base"]:
        text += f" ({ratio(cell[f'{figure}_vs_base'])})"
    return text + (marks_text(cell) if accuracy else "")


def techniques_table(cells: pd.DataFrame) -> Table:
    """The techniques table of one hardware and task (the cells of `techniques_cells` there)."""
    texts = {cell["model"]: {column: technique_text(cell, figure) if cell["status"] == "ok"
                             else status_text(cell["status"]) for column, figure in COLUMNS.items()}
             for _, cell in cells.iterrows()}
    frame = pd.DataFrame.from_dict(texts, orient="index", columns=list(COLUMNS)).rename_axis("model")
    hardware, task = cells[["hardware", "task"]].iloc[0]
    return Table(f"Model-level techniques: {task}, hardware {hardware} (× the variant alone)", frame,
                 techniques_notes(cells))


def measures(cells: pd.DataFrame, column: str) -> str:
    """What the peak memory of `column` (train_measure, infer_measure) counts, in words."""
    names = sorted({name for joined in cells[column].dropna() for name in joined.split(", ") if name})
    return ", ".join(MEASURES.get(name, name) for name in names) or "measure not recorded"


def techniques_notes(cells: pd.DataFrame) -> list[str]:
    """How to read a techniques table: the base rows and ratios, where each figure comes from."""
    notes = [
        "Rows: each attention variant alone, then with model-level techniques, mixed precision or compression. "
        "(0.81×): the figure over that of the variant alone at the same precision (a row that differs by its "
        f"precision alone: over the variant in {FP32}), on this hardware and task; —: not measured.",
        "test acc %: mean over seeds of test accuracy, from the training runs, or for a compressed row from "
        f"lra-compress, with its 95% interval and {AT_CHANCE} as in the accuracy table. Other figures: means over "
        "seeds.",
        "train steps/s, train peak MB: the training runs (lra-train); peak memory: "
        f"{measures(cells, 'train_measure')}.",
        "infer steps/s, infer peak MB: measured on the CPU by lra-compress (int8 dynamic quantization runs on the "
        "CPU only), each compressed model beside the float model it was made from, in the same job; peak memory: "
        f"{measures(cells, 'infer_measure')}.",
        "weights MB: the saved size of the model's weights (a training run's tested checkpoint; the compressed "
        "model in lra-compress).",
    ]
    if cells["status"].ne("ok").any():
        notes.append("OOM or FAIL: no run of the row gave a number (out of memory, or failed or diverged).")
    return notes


def sparsity_level(compression: str | None, measured: float) -> float:
    """The sparsity of a compress record: 0 for the float model, else the level its compression
    names (`pruned 50%`), else the measured fraction of zero weights, to the percent."""
    if pd.isna(compression):
        return 0.0
    named = PRUNED.fullmatch(compression)
    return float(named[1]) / 100 if named else round(measured, 2)


def sparsity_cells(records: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy % per hardware, task, model pruned (`base_model`) and sparsity, over seeds:
    the pruned models of lra-compress, and at sparsity 0 the float model it measured beside them."""
    compress = records[records["kind"] == "compress"]
    pruned = compress[compress["compression"].fillna("").astype(str).str.startswith("pruned")]
    if pruned.empty:
        return pd.DataFrame(columns=SPARSITY)
    keys = ["hardware", "task", "base_model"]
    float_models = compress[compress["compression"].isna()].merge(pruned[keys].drop_duplicates(), on=keys)
    rows = pd.concat([float_models, pruned], ignore_index=True)
    measured = rows.pop("metrics.sparsity") if "metrics.sparsity" in rows else [float("nan")] * len(rows)
    rows["sparsity"] = [sparsity_level(*pair) for pair in zip(rows["compression"], measured)]
    extra = {"finetune_min": ("finetune_steps", "min"), "finetune_max": ("finetune_steps", "max")}
    cells = tested_cells(rows, [*keys, "sparsity"], extra).sort_values([*keys, "sparsity"], kind="stable")
    return cells.reindex(columns=SPARSITY).reset_index(drop=True)


def sparsity_tidy(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per sparsity cell; the note says the sparsity."""
    return cells.assign(table="sparsity", source=OURS, model=cells["base_model"], metric="test_accuracy_pct",
                        note="sparsity " + cells["sparsity"].map("{:.0%}".format))


def sparsity_table(cells: pd.DataFrame) -> Table:
    """Test accuracy % against sparsity for one hardware and task (the cells of `sparsity_cells`)."""
    shown = cells.assign(text=cells.apply(accuracy_text, axis=1),
                         column=cells["sparsity"].map("{:.0%}".format))
    columns = shown.sort_values("sparsity")["column"].unique()
    frame = (shown.pivot(index="base_model", columns="column", values="text")
             .reindex(index=cells["base_model"].unique(), columns=columns).fillna(MISSING))
    frame.columns.name, frame.index.name = None, "model"
    hardware, task = cells[["hardware", "task"]].iloc[0]
    return Table(f"Test accuracy % vs sparsity: {task}, hardware {hardware}", frame, sparsity_notes(cells))


def sparsity_notes(cells: pd.DataFrame) -> list[str]:
    """How the pruned models were made: the pruning, and the fine-tuning steps if the records agree."""
    pruned = cells[cells["sparsity"] > 0]
    low, high = pruned["finetune_min"].min(), pruned["finetune_max"].max()
    steps = ("some" if pd.isna(low) else f"{low:g}" if low == high else f"{low:g} to {high:g}")
    return [f"Columns: the fraction of the linear layers' weights set to zero by global magnitude pruning, then "
            f"{steps} fine-tuning steps (metrics.finetune_steps); 0%: the model as trained, measured in the same "
            "lra-compress job. Cells as in the accuracy table: test accuracy % (mean ± sample std over seeds), "
            f"its 95% interval, {AT_CHANCE} where not significantly above the majority-class rate."]


def techniques_tables(techniques: pd.DataFrame, sparsity: pd.DataFrame) -> list[Table]:
    """Per hardware and task with technique rows: the techniques table, then accuracy against
    sparsity where models were pruned there."""
    tables = []
    for (hardware, task), cells in techniques.groupby(["hardware", "task"], sort=False):
        tables.append(techniques_table(cells))
        pruned = sparsity[(sparsity["hardware"] == hardware) & (sparsity["task"] == task)]
        tables += [sparsity_table(pruned)] if not pruned.empty else []
    return tables
