"""Speed and memory in the format of LRA's Table 2: rows are models, columns sequence lengths, one
set of tables per (hardware, task, mode, batch size). Every model's speed and memory are also
given as ratios to both forms of full attention measured in the same sweep, at the same precision
and without model-level techniques.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd

from lra.memory import MEASURES
from lra.report.cells import BASELINES, FP32, FUSED, GROUP, OURS, PLAIN, Group, aggregate, label, sort_models
from lra.report.reference import published_efficiency
from lra.report.table import Table, number, ratio, status_text

FIGURES = ["steps_per_s", "tokens_per_s", "peak_memory_mb", "peak_rss_mb", "tflops", "matmul_tflops", "max_batch"]
RATIOS = {"speed": "steps_per_s", "memory": "peak_memory_mb"}  # the figures compared with full attention
RATIO_COLUMNS = [f"{kind}_vs_{name}" for kind in RATIOS for name in BASELINES]
# What the measured step ran on: the padded share of its batch, the kernels of scaled_dot_product_attention.
BATCH = ["masked_fraction", "sdpa_backend"]
COLUMNS = [*GROUP, "source", "model", "our_model", "precision", "seq_len", "n", "failed", "status", "memory_measure",
           *FIGURES, *RATIO_COLUMNS, *BATCH]


def efficiency_cells(records: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Bench figures per group, model and length (the mean of repeats), the published rows of
    `reference` in the groups of its task and mode, and the ratios to full attention."""
    bench = records[records["kind"] == "bench"]
    if bench.empty:
        return pd.DataFrame(columns=COLUMNS)
    figures = {name: (name, "mean") for name in [*FIGURES, "masked_fraction"]} | {
        name: (name, "joined") for name in ["memory_measure", "sdpa_backend"]}
    ours = sort_models(aggregate(bench, [*GROUP, "model", "precision", "seq_len"], figures)).assign(source=OURS)
    ours["sdpa_backend"] = ours["sdpa_backend"].mask(ours["sdpa_backend"] == "")  # no call of it: none
    parts = [ours.assign(our_model=ours["model"])]
    if reference is not None:
        parts.append(ours[GROUP].drop_duplicates().merge(published_efficiency(reference), on=["task", "mode"]))
    return with_ratios(pd.concat(parts, ignore_index=True)).reindex(columns=COLUMNS)


def with_ratios(cells: pd.DataFrame) -> pd.DataFrame:
    """`cells` with each row's steps/s and peak memory over those of plain and of fused full
    attention of the same source, group and length, without techniques and at the row's precision,
    so a technique's gain is not mistaken for the attention's (published rows: the published
    Transformer; they state no precision)."""
    keys = [*GROUP, "source", "seq_len", "our_model"]
    precisions = cells["precision"].fillna(FP32)
    ratios = {}
    for name, baseline in BASELINES.items():
        baselines = cells[keys].assign(our_model=precisions.map(lambda precision: label(baseline, (), precision)))
        base = cells.loc[cells["our_model"] == baselines["our_model"], [*keys, *RATIOS.values()]]
        aligned = baselines.merge(base, on=keys, how="left")
        for kind, figure in RATIOS.items():
            ratios[f"{kind}_vs_{name}"] = cells[figure].to_numpy() / aligned[figure].to_numpy()
    return cells.assign(**ratios)


def efficiency_tidy(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per figure of each cell; a cell whose records all failed keeps its speed and memory
    rows, without a value, for its status."""
    ids = [*GROUP, "source", "model", "seq_len", "n", "failed", "status", "memory_measure"]
    tidy = cells.melt(id_vars=ids, value_vars=[*FIGURES, *RATIO_COLUMNS], var_name="metric")
    keep = tidy["value"].notna() | (tidy["status"].ne("ok") & tidy["metric"].isin(RATIOS.values()))
    tidy = tidy[keep].assign(table="efficiency")
    tidy["note"] = tidy.pop("memory_measure").where(tidy["metric"] == RATIOS["memory"])
    return tidy


def grid(cells: pd.DataFrame, text: Callable[[pd.Series], str]) -> pd.DataFrame:
    """Models x lengths of display text; a cell whose records all failed shows its status."""
    shown = [text(cell) if cell["status"] == "ok" else status_text(cell["status"]) for _, cell in cells.iterrows()]
    frame = cells.assign(text=shown).pivot(index="model", columns="seq_len", values="text")
    return frame.reindex(index=cells["model"].unique(), columns=sorted(cells["seq_len"].unique())).fillna("")


def figure_with_ratios(figure: str, kind: str) -> Callable[[pd.Series], str]:
    """Cell text: the figure, then its ratios to plain and to fused full attention."""
    return lambda cell: f"{number(cell[figure])} ({ratio(cell[f'{kind}_vs_plain'])}, {ratio(cell[f'{kind}_vs_fused'])})"


# Tables shown only for the rows that have their figure: (figure, title, cell text).
EXTRA_TABLES = [
    ("tflops", "Achieved TFLOP/s / plain matrix-multiply TFLOP/s measured in the same job",
     lambda cell: f"{number(cell['tflops'])} / {number(cell['matmul_tflops'])}"),
    ("peak_rss_mb", "Peak RSS MB: the whole process (isolated worker), not the attention alone",
     lambda cell: number(cell["peak_rss_mb"])),
    ("max_batch", "Largest batch that fits", lambda cell: number(cell["max_batch"])),
    ("sdpa_backend", "Kernel of scaled_dot_product_attention that ran (the batch's padded share, as in training)",
     lambda cell: f"{cell['sdpa_backend']} ({cell['masked_fraction']:.0%} padding)"),
]


def efficiency_tables(cells: pd.DataFrame, group: Group) -> list[Table]:
    """The speed and memory tables of one group, then those of the figures only some rows have."""
    table = group.select(cells)
    ours = table[table["source"] == OURS]
    steps = "Training" if group.mode == "train" else "Inference"
    measures = ", ".join(MEASURES.get(m, m) for m in ours["memory_measure"].dropna().unique())
    ratios = "(× plain, × fused full attention)"
    tables = [
        Table(f"{steps} steps/s by sequence length {ratios}",
              grid(table, figure_with_ratios("steps_per_s", "speed")), efficiency_notes(table, "above 1: faster")),
        Table(f"Peak memory MB by sequence length, {measures or 'measure not recorded'} {ratios}",
              grid(table, figure_with_ratios("peak_memory_mb", "memory")), efficiency_notes(table, "below 1: less")),
    ]
    for figure, title, text in EXTRA_TABLES:
        rows = ours[ours[figure].notna()]
        if not rows.empty:
            tables.append(Table(title, grid(rows, text)))
    return tables


def efficiency_notes(table: pd.DataFrame, better: str) -> list[str]:
    """How to read a speed or memory table: the ratios, the statuses, the published rows."""
    notes = [f"(× plain, × fused): this row's figure over that of plain ({PLAIN}, the LRA paper's baseline) "
             f"and of fused ({FUSED}) full attention at the same length and precision, without model-level "
             f"techniques, measured in the same sweep ({better}). "
             "OOM: out of memory; skip: not run after a shorter length ran out of memory; FAIL: failed."]
    published = table.loc[table["source"] != OURS, "source"].unique()
    notes += [f"Rows marked ({source}): published figures on other hardware; their ratios are to the published "
              "Transformer, never to our rows." for source in published]
    return notes
