"""Accuracy in the format of LRA's Table 1: rows are models, columns tasks, one table per hardware.

Rows are the trained models and the compressed ones of lra-compress (int8, pruned); its
measurements of a model as trained are no row of their own, that model's training runs are. Cells
hold test accuracy % over seeds; `avg` is recomputed over the tasks where at least one of our rows
has a number, for every row alike; chance level and published rows sit beside ours.
"""

from __future__ import annotations

import pandas as pd

from lra.report.cells import OURS, aggregate, ordered_tasks, sort_models
from lra.report.reference import published_accuracy
from lra.report.table import MISSING, Table, status_text

AVG = "avg"
MAJORITY, CHANCE = "majority class", "chance"  # the chance-level row: its model name and source
COLUMNS = ["hardware", "source", "model", "task", "value", "std", "n", "failed", "status", "note"]


def accuracy_cells(records: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Test accuracy % per hardware, model and task (mean, sample std, n over seeds); the
    majority-class rate per task; the published rows of `reference`; every row's `avg`."""
    tested = records[records["kind"].eq("train") | (records["kind"].eq("compress") & records["compression"].notna())]
    if tested.empty:
        return pd.DataFrame(columns=COLUMNS)
    figures = {"value": ("test_accuracy", "mean"), "std": ("test_accuracy", "std"),
               "majority": ("test_majority_rate", "mean")}
    ours = sort_models(aggregate(tested, ["hardware", "task", "model"], figures))
    ours[["value", "std", "majority"]] *= 100
    chance = (ours.groupby(["hardware", "task"], sort=False)["majority"].mean().dropna().rename("value")
              .reset_index().assign(source=CHANCE, model=MAJORITY, status="ok"))
    parts = [ours.drop(columns="majority").assign(source=OURS), chance]
    if reference is not None:
        parts.append(ours[["hardware"]].drop_duplicates().merge(published_accuracy(reference), how="cross"))
    cells = pd.concat(parts, ignore_index=True)
    return pd.concat([cells, averages(cells)], ignore_index=True).reindex(columns=COLUMNS)


def averages(cells: pd.DataFrame) -> pd.DataFrame:
    """Each row's mean over the averaged tasks (those where one of our rows has a number), per
    hardware; a row lacking a number in any of them gets none, and its note says where."""
    rows = []
    for hardware, table in cells.groupby("hardware", sort=False):
        ours = table[table["source"] == OURS]
        averaged = ordered_tasks(ours.loc[ours["value"].notna(), "task"])
        if not averaged:
            continue
        sources = table.drop_duplicates("model").set_index("model")["source"]
        values = table.pivot(index="model", columns="task", values="value")
        values = values.reindex(index=sources.index, columns=averaged)
        missing = values.isna()
        rows.append(pd.DataFrame({
            "hardware": hardware, "source": sources, "model": sources.index, "task": AVG,
            "value": values.mean(axis=1).where(~missing.any(axis=1)),
            "status": missing.any(axis=1).map({False: "ok", True: "incomplete"}),
            "note": [f"no number for {', '.join(row.index[row])}" if row.any() else f"mean over {', '.join(averaged)}"
                     for _, row in missing.iterrows()],
        }))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=COLUMNS)


def accuracy_text(cell: pd.Series) -> str:
    """`mean ± std (n)` over seeds; the mean alone for one seed; failed seeds counted; OOM or FAIL
    if none gave a number."""
    if pd.isna(cell["value"]):
        return MISSING if cell["task"] == AVG else status_text(cell["status"])
    n = 1 if pd.isna(cell["n"]) else int(cell["n"])
    failed = 0 if pd.isna(cell["failed"]) else int(cell["failed"])
    text = f"{cell['value']:.2f}" + (f" ± {cell['std']:.2f}" if n > 1 else "")
    counts = ([str(n)] if n > 1 or failed else []) + ([f"{failed} FAIL"] if failed else [])
    return f"{text} ({', '.join(counts)})" if counts else text


def accuracy_tables(cells: pd.DataFrame) -> list[Table]:
    """One Table 1 per hardware profile, from `accuracy_cells`."""
    tables = []
    for hardware, table in cells.groupby("hardware", sort=False):
        tasks = ordered_tasks(set(table["task"]) - {AVG}) + ([AVG] if AVG in set(table["task"]) else [])
        frame = (table.assign(text=table.apply(accuracy_text, axis=1))
                 .pivot(index="model", columns="task", values="text")
                 .reindex(index=table["model"].unique(), columns=tasks).fillna(MISSING))
        frame.columns.name = None
        tables.append(Table(f"Test accuracy %, hardware: {hardware}", frame, accuracy_notes(table)))
    return tables


def accuracy_notes(table: pd.DataFrame) -> list[str]:
    """How to read one accuracy table: cells, the average and the rows that are not ours."""
    notes = ["Cells: mean ± sample std (seeds) of test accuracy over seeds; one seed: its figure. "
             "OOM or FAIL: no run gave a number, mostly by running out of memory, or by failing or diverging; "
             "(2, 1 FAIL): 2 seeds ok, 1 not."]
    avg = table[table["task"] == AVG]
    complete = avg[avg["status"] == "ok"]
    if not complete.empty:
        notes.append(f"avg: {complete['note'].iloc[0]}, the tasks where at least one of our rows has a number.")
    incomplete = avg[avg["status"] != "ok"].groupby("note", sort=False)["model"]  # one line per missing set
    notes += [f"No avg for {', '.join(models)}: {note}." for note, models in incomplete]
    if (table["source"] == CHANCE).any():
        notes.append(f"{MAJORITY}: the test accuracy of always answering the most frequent class (chance level).")
    published = table.loc[~table["source"].isin([OURS, CHANCE]), "source"].unique()
    notes += [f"Rows marked ({source}): published figures, at the paper's scale on other hardware; "
              "they never enter our averages or the choice of averaged tasks." for source in published]
    return notes
