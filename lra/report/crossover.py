"""Crossover: the length from which each model beats fused full attention, and stays ahead.

Per efficiency group and model, the shortest measured length at which it beats fused attention
(at the model's precision, without techniques) and at every longer length where both were
compared: in speed (more steps/s) and in memory (less peak memory). Running where fused attention
ran out of memory counts as beating it there.
"""

from __future__ import annotations

import operator
from typing import Callable

import pandas as pd

from lra.report.cells import FUSED, GROUP, OURS, Group, groups, label
from lra.report.table import Table

CRITERIA = {"speed": ("steps_per_s", operator.gt), "memory": ("peak_memory_mb", operator.lt)}
OUT_OF_MEMORY = ("oom", "skipped")  # skipped: a longer length after an OOM
NONE = "none"


def crossover_cells(efficiency: pd.DataFrame) -> pd.DataFrame:
    """One row per group and model other than fused attention: the crossover length in speed and
    in memory (NaN: never), for the models whose fused attention (at their precision) was measured."""
    ours = efficiency[efficiency["source"] == OURS]
    rows = []
    for group in groups(ours):
        cells = group.select(ours).set_index("seq_len")
        for (model, precision), variant in cells.groupby(["model", "precision"], sort=False):
            fused_model = label(FUSED, (), precision)
            fused = cells[cells["model"] == fused_model]
            if model == fused_model or fused.empty:
                continue
            lengths = {kind: crossover(variant, fused, figure, better) for kind, (figure, better) in CRITERIA.items()}
            rows.append({**group._asdict(), "model": model, **lengths})
    return pd.DataFrame(rows, columns=[*GROUP, "model", *CRITERIA])


def crossover(variant: pd.DataFrame, fused: pd.DataFrame, figure: str, better: Callable) -> float:
    """The shortest length (index) from which `variant` beats `fused` in `figure` at every longer
    length where both have a verdict (none where fused attention failed); NaN if none."""
    both = variant[["status", figure]].merge(fused[["status", figure]], left_index=True, right_index=True,
                                             suffixes=("", "_fused")).sort_index()
    both = both[both["status_fused"].isin(["ok", *OUT_OF_MEMORY])]
    wins = both["status"].eq("ok") & (
        both["status_fused"].isin(OUT_OF_MEMORY) | better(both[figure], both[f"{figure}_fused"])
    )
    from_here_on = wins[::-1].cummin()[::-1]
    return float(from_here_on.idxmax()) if from_here_on.any() else float("nan")


def crossover_tidy(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per group, model and criterion; status `none` where the model never beats fused attention."""
    tidy = cells.melt(id_vars=[*GROUP, "model"], value_vars=list(CRITERIA), var_name="metric")
    return tidy.assign(table="crossover", source=OURS, metric="crossover_" + tidy["metric"],
                       status=tidy["value"].notna().map({True: "ok", False: NONE}))


def crossover_table(cells: pd.DataFrame, group: Group) -> Table | None:
    """The crossover lengths of one group, or None where fused attention was not measured."""
    rows = group.select(cells)
    if rows.empty:
        return None
    frame = rows.set_index("model")[list(CRITERIA)].map(lambda n: NONE if pd.isna(n) else f"from {int(n)}")
    notes = [f"Shortest measured length from which the model beats fused full attention ({FUSED}, at the same "
             "precision, without techniques) there and at every longer length: speed, more steps/s; memory, less "
             "peak memory. Running where fused attention "
             f"ran out of memory counts as beating it. {NONE}: at no length."]
    return Table("Crossover with fused full attention", frame, notes)
