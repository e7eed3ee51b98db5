"""Plots of the report: throughput and memory against length, and LRA's Figure 3 bubble chart; the
look of lines and of length axes, which the plots of learning curves and accuracy against length share.

Figures are built without pyplot (no global state, nothing to close) and saved as PNG through
the Agg renderer; each function returns its Figure, so notebooks show it and tests inspect it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lra.files import atomic_write
from lra.memory import MEASURES
from lra.report.accuracy import AVG
from lra.report.cells import OURS, Group, groups
from lra.report.uncertainty import flagged

# Figures plotted against length: (file name prefix, what the y axis shows).
SCALING = {"tokens_per_s": ("throughput", "throughput (tokens/s)"),
           "peak_memory_mb": ("memory", "peak memory (MB, {measures})")}
BUBBLE_TASK, BUBBLE_LENGTH = "text", 4096  # LRA's Figure 3: training speed on the text task at 4K tokens
MAX_BUBBLE = 3000.0  # area (points²) of the bubble of the largest memory
LEGEND_COLUMNS, LEGEND_ROW = 2, 0.22  # a legend under a figure: its columns, and the inches a row of it takes
CHANCE_MARK = " *"  # after the name of a model at chance on some task (not significantly above its majority rate)


def scaling_plot(efficiency: pd.DataFrame, group: Group, figure: str) -> Figure | None:
    """`figure` (tokens_per_s or peak_memory_mb) against length on log-log axes, a line per model;
    None when no model has a point."""
    cells = group.select(efficiency)
    cells = cells[(cells["source"] == OURS) & (cells["status"] == "ok") & cells[figure].notna()]
    if cells.empty:
        return None
    fig = Figure(figsize=(8.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for index, (model, line) in enumerate(cells.sort_values("seq_len").groupby("model", sort=False)):
        ax.plot(line["seq_len"], line[figure], label=model, **look(index))
    name = SCALING[figure][0]
    ax.set(yscale="log", ylabel=axis_label(cells, figure), title=f"{name.capitalize()} against length: {group.title}")
    length_axis(ax, cells["seq_len"])
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def look(index: int) -> dict[str, Any]:
    """The colour and marker of the `index`-th line of a plot: a distinct look for each of many models."""
    colors, markers = colormaps["tab20"].colors, "osD^v<>"
    return {"color": colors[2 * index % 20 + index // 10 % 2], "marker": markers[index % len(markers)]}


def axis_label(cells: pd.DataFrame, figure: str) -> str:
    """The y-axis label of `figure` (tokens_per_s, peak_memory_mb), naming what the memory of `cells` counts."""
    measures = ", ".join(MEASURES.get(m, m) for m in cells["memory_measure"].dropna().unique())
    return SCALING[figure][1].format(measures=measures)


def length_axis(ax: Axes, lengths: pd.Series) -> None:
    """A log2 x axis of sequence lengths, ticked at `lengths` alone."""
    ticks = sorted(lengths.unique())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_xticks(ticks, [str(length) for length in ticks])
    ax.set_xticks([], minor=True)


def legend_below(fig: Figure, ax: Axes) -> None:
    """The legend of the lines of `ax` under the panels of `fig`, which grows taller to hold it."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=LEGEND_COLUMNS, fontsize="small")
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + LEGEND_ROW * math.ceil(len(labels) / LEGEND_COLUMNS))


def plot_stem(group: Group, all_groups: list[Group]) -> str:
    """`<hardware>_<task>_<mode>`, plus `_b<batch>` where that leaves two groups the same name."""
    same = [g for g in all_groups if g[:3] == group[:3]]
    return "_".join(map(str, group[:3])) + (f"_b{group.batch_size}" if len(same) > 1 else "")


def bubble_group(efficiency: pd.DataFrame, hardware: str) -> Group | None:
    """The training-speed group the bubble chart of `hardware` uses: the text task where measured."""
    ours = efficiency[(efficiency["source"] == OURS) & (efficiency["hardware"] == hardware)]
    candidates = [g for g in groups(ours) if g.mode == "train"]
    return min(candidates, key=lambda g: (g.task != BUBBLE_TASK, g.task, g.batch_size), default=None)


def bubble_plot(accuracy: pd.DataFrame, efficiency: pd.DataFrame, hardware: str) -> Figure | None:
    """LRA's Figure 3 for `hardware`: training steps/s at 4096 tokens (else the longest measured
    length) against average accuracy, bubble area proportional to peak memory, models at chance
    on some task marked; None when no model has both a speed and an average."""
    group = bubble_group(efficiency, hardware)
    if group is None:
        return None
    cells = group.select(efficiency)
    cells = cells[cells["source"] == OURS]
    length = BUBBLE_LENGTH if BUBBLE_LENGTH in set(cells["seq_len"]) else cells["seq_len"].max()
    speed = cells[(cells["seq_len"] == length) & (cells["status"] == "ok")].set_index("model")
    avg = accuracy[(accuracy["hardware"] == hardware) & (accuracy["task"] == AVG) & (accuracy["source"] == OURS)]
    points = speed[["steps_per_s", "peak_memory_mb"]].join(avg.set_index("model")["value"], how="inner").dropna()
    if points.empty:
        return None
    ours = accuracy[(accuracy["hardware"] == hardware) & (accuracy["source"] == OURS) & (accuracy["task"] != AVG)]
    chance = ours.loc[ours["at_chance"].map(flagged), "model"].unique()
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.subplots()
    sizes = MAX_BUBBLE * points["peak_memory_mb"] / points["peak_memory_mb"].max()
    ax.scatter(points["steps_per_s"], points["value"], s=sizes, alpha=0.4)
    for model, point in points.iterrows():
        ax.annotate(model + (CHANCE_MARK if model in chance else ""), (point["steps_per_s"], point["value"]),
                    ha="center", va="center", fontsize="small")
    which = "" if length == BUBBLE_LENGTH else f", the longest measured ({BUBBLE_LENGTH} was not)"
    marked = f"\n{CHANCE_MARK.strip()}: at chance on at least one task" if points.index.isin(chance).any() else ""
    ax.set(xlabel=f"training steps/s at {length} tokens{which} ({group.task}, batch {group.batch_size})",
           ylabel="average test accuracy (%)",
           title=f"Speed, accuracy and memory, hardware {hardware}\n"
                 f"bubble area ∝ peak memory (largest {points['peak_memory_mb'].max():.0f} MB){marked}")
    ax.margins(0.15)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write `fig` as a PNG, atomically."""
    atomic_write(path, lambda file: fig.savefig(file, format="png", dpi=100), mode="wb")
    return path
