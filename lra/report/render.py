"""The report's files: leaderboard.md, leaderboard.html, leaderboard.csv and plots/*.png.

The report is first laid out as a list of blocks (headings, paragraphs, tables, images), then
rendered twice, as Markdown and as HTML, so both always hold the same tables and plots.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd

from lra.files import atomic_write, remove_stale_temporaries
from lra.report.accuracy import accuracy_tables
from lra.report.cells import groups
from lra.report.crossover import crossover_table
from lra.report.curves import curves_plot, settings, time_to_accuracy_table
from lra.report.efficiency import efficiency_tables
from lra.report.lengths import length_plot, length_table
from lra.report.plots import SCALING, bubble_plot, plot_stem, save_figure, scaling_plot
from lra.report.summary import Summary, summarise
from lra.report.techniques import techniques_tables

# A block: ("heading", (level, text)), ("text", str), ("table", (Table, level)) or
# ("image", (path relative to the report, alt text, Figure)).
Block = tuple[str, Any]
TITLE = "LRA-style leaderboard"
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 80em; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
tbody th { text-align: left; }
ul.notes { color: #555; font-size: 0.85em; }
img { max-width: 100%; }
"""


def write_report(records: pd.DataFrame, out: Path, reference: str | None = None) -> dict[str, Path]:
    """Write the report of `records` under `out`, with the published rows of `reference` if named;
    return every file written, by its path relative to `out`. Each file is written whole or not at
    all; what the writes of a killed report left is removed first."""
    summary = summarise(records, reference)
    blocks = [("heading", (1, TITLE)), ("text", introduction(records)),
              *accuracy_section(summary), *efficiency_section(summary), *bubble_section(summary),
              *techniques_section(summary), *curves_section(summary), *lengths_section(summary)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # here, so that an `out` that is a file is the error named
    for directory in {out, *((out / content[0]).parent for kind, content in blocks if kind == "image")}:
        remove_stale_temporaries(directory)
    written = {content[0]: save_figure(content[2], out / content[0]) for kind, content in blocks if kind == "image"}
    for name, text in [("leaderboard.md", markdown(blocks)), ("leaderboard.html", page(blocks))]:
        atomic_write(out / name, lambda file, text=text: file.write(text))
        written[name] = out / name
    atomic_write(out / "leaderboard.csv", lambda file: summary.tidy().to_csv(file, index=False))
    written["leaderboard.csv"] = out / "leaderboard.csv"
    return written


def introduction(records: pd.DataFrame) -> str:
    """What the report was made from, and how to read its figures."""
    counts = records["kind"].value_counts()
    kinds = ", ".join(f"{count} {kind}" for kind, count in counts.items())
    return (f"From {len(records)} run records ({kinds}). Figures are compared as ratios measured on the same "
            "machine in the same sweep; absolute figures hold for the hardware named in each heading.")


def accuracy_section(summary: Summary) -> list[Block]:
    """One LRA Table 1 per hardware profile."""
    tables = accuracy_tables(summary.accuracy)
    return [("heading", (2, "Accuracy (LRA Table 1)")), *(("table", (table, 3)) for table in tables)] if tables else []


def efficiency_section(summary: Summary) -> list[Block]:
    """Per group: the speed and memory tables, the scaling plots, the crossover."""
    all_groups = groups(summary.efficiency)
    blocks: list[Block] = [("heading", (2, "Efficiency (LRA Table 2)"))] if all_groups else []
    for group in all_groups:
        blocks += [("heading", (3, group.title)),
                   *(("table", (table, 4)) for table in efficiency_tables(summary.efficiency, group))]
        for figure, (name, _) in SCALING.items():
            plot = scaling_plot(summary.efficiency, group, figure)
            path = f"plots/{name}_{plot_stem(group, all_groups)}.png"
            blocks += [("image", (path, f"{name}: {group.title}", plot))] if plot else []
        crossover = crossover_table(summary.crossover, group)
        blocks += [("table", (crossover, 4))] if crossover else []
    return blocks


def bubble_section(summary: Summary) -> list[Block]:
    """LRA's Figure 3 per hardware with both accuracy and training speed."""
    blocks: list[Block] = []
    for hardware in summary.accuracy["hardware"].unique():
        figure = bubble_plot(summary.accuracy, summary.efficiency, hardware)
        if figure is not None:
            alt = f"speed, accuracy and memory: {hardware}"
            blocks.append(("image", (f"plots/bubble_{hardware}.png", alt, figure)))
    return [("heading", (2, "Speed, accuracy and memory (LRA Figure 3)")), *blocks] if blocks else []


def techniques_section(summary: Summary) -> list[Block]:
    """Per hardware and task with technique rows: each variant beside its techniques, then
    accuracy against sparsity where models were pruned."""
    tables = techniques_tables(summary.techniques, summary.sparsity)
    return [("heading", (2, "Model-level techniques")), *(("table", (table, 3)) for table in tables)] if tables else []


def curves_section(summary: Summary) -> list[Block]:
    """Per hardware, task and length with validation histories: the learning curves, then the
    training time each row took to a few levels of validation accuracy."""
    blocks: list[Block] = []
    for setting in settings(summary.curves):
        table = time_to_accuracy_table(summary.time_to_accuracy, setting)
        blocks += [("heading", (3, setting.title)),
                   ("image", (f"plots/{setting.stem}.png", f"learning curves: {setting.title}",
                              curves_plot(summary.curves, setting))),
                   *([("table", (table, 4))] if table else [])]
    text = ("Validation accuracy at each validation of every training run that kept its history, against optimizer "
            "steps and against seconds of training on the hardware named (validations not counted): one line per "
            "run, the runs (seeds) of a row in its colour, chance (the majority-class rate) dashed. Each table "
            "gives the training time each row took until its validation accuracy first reached a few levels.")
    return [("heading", (2, "Learning curves")), ("text", text), *blocks] if blocks else []


def lengths_section(summary: Summary) -> list[Block]:
    """Per hardware and task trained at two lengths or more: test accuracy by length, and the plot of
    accuracy, throughput and memory against length."""
    blocks: list[Block] = []
    for (hardware, task), cells in summary.lengths.groupby(["hardware", "task"], sort=False):
        blocks += [("table", (length_table(cells), 3)),
                   ("image", (f"plots/lengths_{hardware}_{task}.png", f"accuracy against length: {task}, {hardware}",
                              length_plot(cells)))]
    return [("heading", (2, "Accuracy against length")), *blocks] if blocks else []


def markdown(blocks: list[Block]) -> str:
    """leaderboard.md: GitHub-flavoured Markdown, plots embedded by relative path."""
    parts = []
    for kind, content in blocks:
        if kind == "heading":
            parts.append(f"{'#' * content[0]} {content[1]}\n")
        elif kind == "text":
            parts.append(f"{content}\n")
        elif kind == "table":
            parts.append(content[0].markdown(content[1]))
        else:
            parts.append(f"![{content[1]}]({content[0]})\n")
    return "\n".join(parts)


def page(blocks: list[Block]) -> str:
    """A self-contained HTML page (the plots are files beside it)."""
    parts = []
    for kind, content in blocks:
        if kind == "heading":
            parts.append(f"<h{content[0]}>{html.escape(content[1])}</h{content[0]}>")
        elif kind == "text":
            parts.append(f"<p>{html.escape(content)}</p>")
        elif kind == "table":
            parts.append(content[0].html(content[1]))
        else:
            parts.append(f'<p><img src="{html.escape(content[0])}" alt="{html.escape(content[1])}"></p>')
    body = "\n".join(parts)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{TITLE}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
