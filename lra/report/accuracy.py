"""Accuracy in the format of LRA's Table 1: rows are models, columns tasks, one table per hardware.

Rows are the trained models and the compressed ones of lra-compress (int8, pruned); its
measurements of a model as trained are no row of their own, that model's training runs are. Cells
hold test accuracy % over seeds with its 95% interval (lra.report.uncertainty), marked where it is
not significantly above the majority-class rate (at chance); `avg` is recomputed over the tasks
where at least one of our rows has a number, for every row alike; chance level and published rows
sit beside ours, and the notes say which rows the best of each task is not told apart from.
"""

from __future__ import annotations

import pandas as pd

from lra.report.cells import OURS, aggregate, ordered_tasks, sort_models
from lra.report.reference import published_accuracy
from lra.report.table import MISSING, Table, status_text
from lra.report.uncertainty import INTERVAL, flagged, half_width, with_intervals, within_noise

AVG = "avg"
MAJORITY, CHANCE = "majority class", "chance"  # the chance-level row: its model name and source
AT_CHANCE = "(chance)"  # after a cell not significantly above the majority rate
DEGENERATE = "†"  # after a cell where a run gave one class to nearly every test example
COLUMNS = ["hardware", "source", "model", "task", "value", "std", "n", "failed", "status", "examples", "majority",
           *INTERVAL, "degenerate", "ties_best", "note"]
# Per seed: test accuracy, the test examples it is over, the majority-class rate of the same
# examples, and whether the run gave one class to nearly all of them (lra.predictions).
FIGURES = {"value": ("test_accuracy", "mean"), "std": ("test_accuracy", "std"), "examples": ("test_examples", "mean"),
           "majority": ("test_majority_rate", "mean"), "degenerate": ("test_degenerate", "any")}


def tested_cells(records: pd.DataFrame, keys: list[str], extra: dict[str, tuple[str, str]] | None = None
                 ) -> pd.DataFrame:
    """Test accuracy % per `keys` over seeds, with its interval and chance level (all in percent),
    from records that tested a model (a training run, lra-compress), and the `extra` figures (as
    `aggregate` takes them)."""
    cells = aggregate(records, keys, FIGURES | (extra or {}))  # figures older records lack are NaN
    cells[["value", "std", "majority"]] *= 100
    return with_intervals(cells)


def accuracy_cells(records: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Test accuracy % per hardware, model and task (mean, sample std, n over seeds, 95% interval,
    at chance or not); the majority-class rate per task; the published rows of `reference`; every
    row's `avg`; and which rows are within noise of each task's best."""
    tested = records[records["kind"].eq("train") | (records["kind"].eq("compress") & records["compression"].notna())]
    if tested.empty:
        return pd.DataFrame(columns=COLUMNS)
    ours = sort_models(tested_cells(tested, ["hardware", "task", "model"])).assign(source=OURS)
    chance = (ours.groupby(["hardware", "task"], sort=False)["majority"].mean().dropna().rename("value")
              .reset_index().assign(source=CHANCE, model=MAJORITY, status="ok"))
    parts = [with_ties(ours), chance]
    if reference is not None:
        parts.append(ours[["hardware"]].drop_duplicates().merge(published_accuracy(reference), how="cross"))
    cells = pd.concat(parts, ignore_index=True)
    return pd.concat([cells, averages(cells)], ignore_index=True).reindex(columns=COLUMNS)


def with_ties(ours: pd.DataFrame, by: tuple[str, ...] = ("hardware", "task")) -> pd.DataFrame:
    """`ours` with `ties_best`: per group of `by`, whether a row is within noise of the best row
    there (the best row itself included); NA for rows without a number or an interval."""
    ties = pd.Series(pd.NA, index=ours.index, dtype=object)
    for _, cells in ours.groupby(list(by), sort=False):
        rated = cells[cells["ci_low"].notna()]
        if rated.empty:
            continue
        best = rated.loc[rated["value"].idxmax()]
        ties[rated.index] = [within_noise(best, cell) for _, cell in rated.iterrows()]
    return ours.assign(ties_best=ties)


def averages(cells: pd.DataFrame) -> pd.DataFrame:
    """Each row's mean over the averaged tasks (those where one of our rows has a number), per
    hardware, with an interval of half-width sqrt(sum of the tasks' half-widths squared) / tasks
    and at chance when it reaches the mean majority rate; a row lacking a number in any of them
    gets none, and its note says where."""
    rows = []
    for hardware, table in cells.groupby("hardware", sort=False):
        ours = table[table["source"] == OURS]
        averaged = ordered_tasks(ours.loc[ours["value"].notna(), "task"])
        if not averaged:
            continue
        sources = table.drop_duplicates("model").set_index("model")["source"]
        table = table.assign(half=table.apply(half_width, axis=1))

        def wide(column: str) -> pd.DataFrame:
            return table.pivot(index="model", columns="task", values=column).reindex(index=sources.index,
                                                                                      columns=averaged)

        values = wide("value")
        missing = values.isna()
        mean = values.mean(axis=1).where(~missing.any(axis=1))
        half = wide("half").pow(2).sum(axis=1, min_count=len(averaged)).pow(0.5) / len(averaged)
        majority = wide("majority").mean(axis=1)
        low = mean - half
        rows.append(pd.DataFrame({
            "hardware": hardware, "source": sources, "model": sources.index, "task": AVG,
            "value": mean, "ci_low": low, "ci_high": mean + half, "majority": majority,
            "at_chance": (low <= majority).astype(object).where(low.notna() & majority.notna()),
            "status": missing.any(axis=1).map({False: "ok", True: "incomplete"}),
            "note": [f"no number for {', '.join(row.index[row])}" if row.any() else f"mean over {', '.join(averaged)}"
                     for _, row in missing.iterrows()],
        }))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=COLUMNS)


def accuracy_text(cell: pd.Series) -> str:
    """`mean ± std (n)` over seeds, or the mean alone for one seed; then `[low, high]`, its 95%
    interval, `(chance)` where it is not significantly above the majority rate and † where a run
    was a degenerate predictor; failed seeds counted; OOM or FAIL if none gave a number."""
    if pd.isna(cell["value"]):
        return MISSING if cell["task"] == AVG else status_text(cell["status"])
    n = 1 if pd.isna(cell["n"]) else int(cell["n"])
    failed = 0 if pd.isna(cell["failed"]) else int(cell["failed"])
    text = f"{cell['value']:.2f}" + (f" ± {cell['std']:.2f}" if n > 1 else "")
    counts = ([str(n)] if n > 1 or failed else []) + ([f"{failed} FAIL"] if failed else [])
    text += f" ({', '.join(counts)})" if counts else ""
    return text + interval_text(cell) + marks_text(cell)


def interval_text(cell: pd.Series) -> str:
    """` [low, high]`, the cell's 95% interval, or nothing without one."""
    return "" if pd.isna(cell["ci_low"]) else f" [{cell['ci_low']:.1f}, {cell['ci_high']:.1f}]"


def marks_text(cell: pd.Series) -> str:
    """` (chance)` where the cell is not significantly above the majority rate, `†` where a run was
    a degenerate predictor."""
    return (f" {AT_CHANCE}" if flagged(cell["at_chance"]) else "") + (DEGENERATE if flagged(cell["degenerate"]) else "")


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
    """How to read one accuracy table: cells, intervals, chance, ties, the average and the rows
    that are not ours."""
    notes = ["Cells: test accuracy % over the whole test split; several seeds: mean ± sample std (seeds). "
             "[low, high]: 95% interval (one seed: Wilson interval over the test examples; several: Student t "
             "interval of the mean over seeds). "
             "OOM or FAIL: no run gave a number, mostly by running out of memory, or by failing or diverging; "
             "(2, 1 FAIL): 2 seeds ok, 1 not. A cell aggregates only runs whose configs differ by the seed; "
             "[key=value] after a row's name: what sets its runs apart from others of the same name."]
    if table["at_chance"].map(flagged).any():
        notes.append(f"{AT_CHANCE}: not significantly above chance: the 95% interval reaches the majority-class "
                     "rate of the same test examples.")
    if table["degenerate"].map(flagged).any():
        notes.append(f"{DEGENERATE}: a run gave one class to at least 95% of the test examples (a degenerate "
                     "predictor).")
    notes += tie_notes(table)
    avg = table[table["task"] == AVG]
    complete = avg[avg["status"] == "ok"]
    if not complete.empty:
        notes.append(f"avg: {complete['note'].iloc[0]}, the tasks where at least one of our rows has a number; its "
                     "interval combines the tasks' (half-width: root sum of squares over the number of tasks).")
    incomplete = avg[avg["status"] != "ok"].groupby("note", sort=False)["model"]  # one line per missing set
    notes += [f"No avg for {', '.join(models)}: {note}." for note, models in incomplete]
    if (table["source"] == CHANCE).any():
        notes.append(f"{MAJORITY}: the test accuracy of always answering the most frequent class (chance level).")
    published = table.loc[~table["source"].isin([OURS, CHANCE]), "source"].unique()
    notes += [f"Rows marked ({source}): published figures, at the paper's scale on other hardware; "
              "they never enter our averages or the choice of averaged tasks." for source in published]
    return notes


def tie_notes(table: pd.DataFrame) -> list[str]:
    """Per task, the rows whose difference from the best row is within noise (their difference is
    at most the root sum of squares of the two intervals' half-widths)."""
    notes = [tie_note(table[(table["task"] == task) & (table["source"] == OURS)], task)
             for task in ordered_tasks(set(table["task"]) - {AVG})]
    return [note for note in notes if note]


def tie_note(cells: pd.DataFrame, where: str) -> str | None:
    """Which of `cells` (with `ties_best`) are within noise of the best of them, which below it by
    more than the noise, headed by `where` they were measured; None for fewer than two rated cells."""
    rated = cells[cells["ties_best"].notna()]
    if len(rated) < 2:
        return None
    best = rated.loc[rated["value"].idxmax()]
    others = rated.drop(index=best.name)
    tied, apart = others[others["ties_best"].map(flagged)], others[~others["ties_best"].map(flagged)]
    lead = f"{where}: the best row, {best['model']} ({best['value']:.2f}),"
    if tied.empty:
        return f"{lead} is ahead of every other row by more than the noise."
    if apart.empty:
        return f"{lead} is within noise of every other row: this task does not rank them."
    if len(tied) <= len(apart):
        return (f"{lead} is within noise of {', '.join(tied['model'])}; the other rows are below it by more than "
                "the noise.")
    return (f"{lead} is within noise of every other row but {', '.join(apart['model'])}, which are below it by more "
            "than the noise.")
