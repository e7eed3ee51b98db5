"""A table as readers see it: a title, cells of display text, and notes that say how to read it."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd

# What a cell whose records all failed shows, by status; any other failure shows FAIL.
STATUS_TEXT = {"oom": "OOM", "skipped": "skip"}
MISSING = "—"


@dataclass
class Table:
    """One displayed table; renders itself as Markdown, as HTML, and in notebooks."""

    title: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def markdown(self, level: int = 3) -> str:
        notes = "".join(f"- {note}\n" for note in self.notes)
        return f"{'#' * level} {self.title}\n\n{self.frame.to_markdown(disable_numparse=True)}\n\n{notes}"

    def html(self, level: int = 3) -> str:
        notes = "".join(f"<li>{html.escape(note)}</li>" for note in self.notes)
        frame = self.frame.rename_axis(index=None, columns=self.frame.index.name)  # one header row
        return (f"<h{level}>{html.escape(self.title)}</h{level}>\n{frame.to_html(border=0)}\n"
                + (f"<ul class='notes'>{notes}</ul>\n" if notes else ""))

    def _repr_html_(self) -> str:
        return self.html()


def status_text(status: str) -> str:
    return STATUS_TEXT.get(status, "FAIL")


def number(value: float) -> str:
    """Three significant figures, without exponents for large values."""
    if pd.isna(value):
        return MISSING
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def ratio(value: float) -> str:
    return MISSING if pd.isna(value) else f"{value:.2f}×"
