"""Learning curves and time to accuracy, from the validation history of training runs.

Train records of schema 4 on keep each periodic validation (lra.records.Validation): validation
accuracy after so many optimizer steps and seconds of training. Per hardware, task and length (a
`Setting`), the report draws every run's curve against steps and against seconds, and tabulates the
training seconds and steps each row took until its validation accuracy first reached a few levels.
Records without a history (older schemas) give no point, hence no curve and no time.

The levels are fractions (FRACTIONS) of the way from chance, the majority-class rate of the test
split, to the best validation accuracy any run reached in the setting (where that is significantly
above chance): all above chance, the
highest reached by the best run, whatever the task's difficulty, where fixed levels would all be
out of reach on a hard task at a small budget (ListOps on the CPU) and all passed at once on an
easy one. Rows are named by `length_model` (lra.report.load): the setting names the length.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import pandas as pd
from matplotlib.figure import Figure

from lra.records import Validation
from lra.report.cells import OURS, ordered_tasks, selected, sort_models
from lra.report.plots import legend_below, look
from lra.report.table import Table, number
from lra.report.uncertainty import wilson

FRACTIONS = (0.5, 0.75, 0.9)  # the levels: these fractions of the way from chance to the best run
SETTING = ["hardware", "task", "seq_len"]  # what one figure and one table hold fixed
POINT = [item.name for item in dataclasses.fields(Validation)]
# A point: a validation of run `run` (the record's index) on `val_examples` examples, accuracy and
# majority-class rate in percent.
POINTS = [*SETTING, "model", "seed", "run", "majority", "val_examples", *POINT]
CELLS = [*SETTING, "model", "fraction", "threshold", "chance", "best", "runs", "n", "train_seconds", "step", "status"]
NOT_REACHED = "not reached"  # the status (and the text) of a row no run of which reached a level
CHANCE_STYLE = {"linestyle": "--", "color": "grey", "label": "chance (majority class)"}


class Setting(NamedTuple):
    """The conditions of one learning-curve figure and one time-to-accuracy table."""

    hardware: str
    task: str
    seq_len: int

    @property
    def title(self) -> str:
        return f"{self.task}, {self.seq_len} tokens, hardware {self.hardware}"

    @property
    def stem(self) -> str:
        """The figure's file name, without its suffix."""
        return f"curves_{self.hardware}_{self.task}_{self.seq_len}"

    def select(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of `frame` (points or cells) of this setting."""
        return selected(frame, self._asdict())


def settings(frame: pd.DataFrame) -> list[Setting]:
    """The settings present in `frame` (points or cells), by hardware, task (LRA's order) and length."""
    found = [Setting(*keys) for keys in frame[SETTING].drop_duplicates().itertuples(index=False)]
    tasks = ordered_tasks(setting.task for setting in found)
    return sorted(found, key=lambda setting: (setting.hardware, tasks.index(setting.task), setting.seq_len))


def curve_points(records: pd.DataFrame) -> pd.DataFrame:
    """One row per validation of every training run that succeeded and kept a history: its setting, row,
    seed, run, the majority-class rate of its test split and the Validation's fields, rows in table order."""
    runs = records[records["kind"].eq("train") & records["status"].eq("ok")]
    history = runs.get("metrics.history", pd.Series(None, index=runs.index, dtype=object))
    runs = runs[history.map(lambda validations: isinstance(validations, list) and bool(validations))]
    if runs.empty:
        return pd.DataFrame(columns=POINTS)
    unknown = pd.Series(float("nan"), index=runs.index)
    majority = runs.get("metrics.test_majority_rate", unknown)
    points = (runs[[*SETTING, "length_model", "seed"]].rename(columns={"length_model": "model"})
              .assign(run=runs.index, majority=100 * majority, val_examples=runs.get("metrics.val_examples", unknown),
                      validation=history.loc[runs.index])
              .explode("validation", ignore_index=True))
    fields = pd.DataFrame(points.pop("validation").tolist()).reindex(columns=POINT)
    points = pd.concat([points, fields], axis=1).assign(val_accuracy=100 * fields["val_accuracy"])
    return sort_models(points).reindex(columns=POINTS)


def time_to_accuracy_cells(points: pd.DataFrame, fractions: Sequence[float] = FRACTIONS) -> pd.DataFrame:
    """Per setting, row and level (`fractions` of the way from chance to the best validation accuracy
    there): the threshold (%), the row's runs, how many reached it (`n`), and the mean over those of the
    training seconds and steps at their first validation at or above it (status `not reached` where
    none did). A setting without a chance level, or whose best validation is not significantly above
    it (its Wilson interval over the examples it scored reaches chance), has no level: its levels
    would be noise."""
    rows = []
    for setting in settings(points):
        group = setting.select(points)
        chance, top = chance_level(group), group.loc[group["val_accuracy"].idxmax()]
        best = top["val_accuracy"]
        if not 100 * wilson(best / 100, top["val_examples"])[0] > chance:  # also False where either is NaN
            continue
        for fraction in fractions:
            threshold = chance + fraction * (best - chance)
            for model, runs in group.groupby("model", sort=False):
                first = runs[runs["val_accuracy"] >= threshold].drop_duplicates("run")  # points are in run order
                rows.append({**setting._asdict(), "model": model, "fraction": fraction, "threshold": threshold,
                             "chance": chance, "best": best, "runs": runs["run"].nunique(), "n": len(first),
                             "train_seconds": first["train_seconds"].mean(), "step": first["step"].mean(),
                             "status": "ok" if len(first) else NOT_REACHED})
    return pd.DataFrame(rows, columns=CELLS)


def chance_level(points: pd.DataFrame) -> float:
    """The mean over the runs of `points` of the majority-class rate of their test split (%; NaN if unknown)."""
    return points.drop_duplicates("run")["majority"].mean()


def time_to_accuracy_tidy(cells: pd.DataFrame) -> pd.DataFrame:
    """Two rows per cell, its seconds and its steps (no value where not reached); `threshold` is the
    level (%), `majority` the chance level, and the note says how the level was set and how many runs reached it."""
    note = (cells["fraction"].map("{:.0%} of the way from chance to the best validation accuracy of any run (".format)
            + cells["best"].map("{:.1f}%); reached by ".format) + cells["n"].astype(str) + " of "
            + cells["runs"].astype(str) + " runs")
    tidy = cells.assign(note=note).melt(id_vars=[*SETTING, "model", "threshold", "chance", "n", "status", "note"],
                                        value_vars=["train_seconds", "step"], var_name="metric")
    metric = tidy["metric"].map({"train_seconds": "train_seconds_to_threshold", "step": "steps_to_threshold"})
    return tidy.assign(table="time_to_accuracy", source=OURS, metric=metric, majority=tidy["chance"])


def reach_text(cell: pd.Series) -> str:
    """`12.3 s, 150 steps`: the mean over the runs that reached the level, and how many did of several."""
    if cell["status"] != "ok":
        return NOT_REACHED
    runs = f" ({cell['n']} of {cell['runs']} runs)" if cell["runs"] > 1 else ""
    return f"{number(cell['train_seconds'])} s, {number(cell['step'])} steps{runs}"


def time_to_accuracy_table(cells: pd.DataFrame, setting: Setting) -> Table | None:
    """The training seconds and steps of each row to each level in `setting`; None where it has no level."""
    rows = setting.select(cells)
    if rows.empty:
        return None
    levels = rows.drop_duplicates("fraction")
    frame = (rows.assign(text=rows.apply(reach_text, axis=1)).pivot(index="model", columns="fraction", values="text")
             .reindex(index=rows["model"].unique(), columns=levels["fraction"]))
    frame.columns = levels["threshold"].map("val ≥ {:.1f}%".format).tolist()  # labels only: two may round alike
    frame.index.name = "model"
    return Table(f"Training seconds to validation accuracy: {setting.title}", frame, time_notes(rows, setting))


def time_notes(rows: pd.DataFrame, setting: Setting) -> list[str]:
    """How to read a time-to-accuracy table: what is timed, and how its levels were set."""
    levels = rows.drop_duplicates("fraction")
    chance, best = levels[["chance", "best"]].iloc[0]
    return [
        f"Cells: training seconds on hardware {setting.hardware} (wall-clock, validations and checkpoints not "
        "counted) and optimizer steps until a run's validation accuracy first reached the column's level, to the "
        "resolution of its validations (every trainer.eval_every steps, on the validation examples it scored). "
        f"Several runs (seeds): the mean over those that reached it, (2 of 3 runs): how many did; {NOT_REACHED}: "
        "no validation of any run reached it.",
        f"Levels: {', '.join(f'{f:.0%}' for f in levels['fraction'])} of the way from chance ({chance:.1f}%, the "
        f"majority-class rate of the test split) to the best validation accuracy any run reached here "
        f"({best:.1f}%), so that every level is above chance and the best run reaches the highest.",
    ]


def curves_plot(points: pd.DataFrame, setting: Setting) -> Figure:
    """Validation accuracy against optimizer steps and against training seconds in `setting`, a line
    per run (the runs of a row, its seeds, in its colour), chance dashed."""
    group = setting.select(points)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for index, (model, runs) in enumerate(group.groupby("model", sort=False)):
        count = runs["run"].nunique()
        name = model + (f" ({count} runs)" if count > 1 else "")
        for order, (_, run) in enumerate(runs.groupby("run", sort=False)):
            for ax, x in zip(axes, ("step", "train_seconds")):
                ax.plot(run[x], run["val_accuracy"], label=None if order else name, linewidth=1 if count > 1 else 1.5,
                        markersize=3, **look(index))
    chance = chance_level(group)
    if pd.notna(chance):
        for ax in axes:
            ax.axhline(chance, **CHANCE_STYLE)
    axes[0].set(xlabel="optimizer steps", ylabel="validation accuracy (%)")
    axes[1].set(xlabel=f"training seconds on hardware {setting.hardware} (validations not counted)")
    legend_below(fig, axes[1])
    fig.suptitle(f"Learning curves: {setting.title}\none line per run; the runs (seeds) of a row share its colour")
    return fig
