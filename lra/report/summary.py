"""Every aggregated cell behind the report: accuracy, efficiency, crossover, techniques, sparsity,
learning-curve points, time to accuracy and accuracy against length, and their tidy form."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from lra.report.accuracy import accuracy_cells
from lra.report.crossover import crossover_cells, crossover_tidy
from lra.report.curves import curve_points, time_to_accuracy_cells, time_to_accuracy_tidy
from lra.report.efficiency import efficiency_cells, efficiency_tidy
from lra.report.lengths import length_cells, length_tidy
from lra.report.reference import load_reference
from lra.report.techniques import sparsity_cells, sparsity_tidy, techniques_cells, techniques_tidy

# leaderboard.csv: one row per figure of a cell, blank where a column does not apply.
TIDY = ["table", "source", "hardware", "task", "mode", "batch_size", "model", "seq_len", "metric", "value",
        "std", "n", "failed", "status", "ci_low", "ci_high", "majority", "threshold", "at_chance", "degenerate",
        "ties_best", "examples", "note"]
INTEGERS = ["batch_size", "seq_len", "n", "failed"]


@dataclass
class Summary:
    """The cells of each kind of table (see accuracy.py, efficiency.py, crossover.py, techniques.py,
    curves.py, lengths.py) and the points of the learning curves (`curves`, no table of their own)."""

    accuracy: pd.DataFrame
    efficiency: pd.DataFrame
    crossover: pd.DataFrame
    techniques: pd.DataFrame
    sparsity: pd.DataFrame
    curves: pd.DataFrame
    time_to_accuracy: pd.DataFrame
    lengths: pd.DataFrame

    def tidy(self) -> pd.DataFrame:
        """All cells in one long table, one figure per row, for pandas users."""
        parts = [
            self.accuracy.assign(table="accuracy", metric="test_accuracy_pct"),
            efficiency_tidy(self.efficiency),
            crossover_tidy(self.crossover),
            techniques_tidy(self.techniques),
            sparsity_tidy(self.sparsity),
            time_to_accuracy_tidy(self.time_to_accuracy),
            length_tidy(self.lengths),
        ]
        tidy = pd.concat([part.reindex(columns=TIDY) for part in parts], ignore_index=True)
        return tidy.astype({column: "Int64" for column in INTEGERS})


def summarise(records: pd.DataFrame, reference: str | None = None) -> Summary:
    """The cells of `records` (from load_records), with the published rows of `reference` if named."""
    published = load_reference(reference) if reference else None
    efficiency = efficiency_cells(records, published)
    accuracy = accuracy_cells(records, published)
    curves = curve_points(records)
    return Summary(accuracy, efficiency, crossover_cells(efficiency), techniques_cells(records, accuracy),
                   sparsity_cells(records), curves, time_to_accuracy_cells(curves), length_cells(records))
