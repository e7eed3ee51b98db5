"""Published reference figures, shown beside ours but never mixed into our averages or ratios.

Each reference is a CSV beside this module (`lra_paper.csv`: Tables 1 and 2 of the LRA paper),
one figure per row: `table, model` (the published name), `our_model` (the row it corresponds to
here), `task, seq_len, metric, value, note` and `source` (where and on what it was measured).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lra.errors import LRAError

REFERENCE_DIR = Path(__file__).parent
# Published efficiency metrics: (our metric, factor to our unit). LRA's Table 2 timed training steps.
EFFICIENCY = {"train_steps_per_s": ("steps_per_s", 1.0), "peak_memory_gb": ("peak_memory_mb", 1024.0)}
MODE = "train"


def known_references() -> list[str]:
    return sorted(path.stem for path in REFERENCE_DIR.glob("*.csv"))


def load_reference(name: str) -> pd.DataFrame:
    """The figures of reference `name`, each labelled `<published name> (<source>)`."""
    if name not in known_references():
        raise LRAError(f"report.reference: unknown reference {name!r}; known: {', '.join(known_references())}")
    figures = pd.read_csv(REFERENCE_DIR / f"{name}.csv", dtype={"table": str})
    return figures.assign(label=figures["model"] + " (" + figures["source"] + ")")


def published_accuracy(reference: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy % per published model and task; a figure published as FAIL has status failed."""
    rows = reference[reference["metric"] == "test_accuracy_pct"]
    return pd.DataFrame({
        "source": rows["source"], "model": rows["label"], "our_model": rows["our_model"], "task": rows["task"],
        "value": rows["value"], "status": rows["value"].notna().map({True: "ok", False: "failed"}),
    })


def published_efficiency(reference: pd.DataFrame) -> pd.DataFrame:
    """Steps/s and peak memory MB per published model, task and length, one row each."""
    rows = reference[reference["metric"].isin(EFFICIENCY)]
    scaled = rows.assign(
        metric=rows["metric"].map(lambda m: EFFICIENCY[m][0]),
        value=rows["value"] * rows["metric"].map(lambda m: EFFICIENCY[m][1]),
    )
    wide = scaled.pivot_table(index=["source", "label", "our_model", "task", "seq_len"], columns="metric",
                              values="value", sort=False).reset_index()
    return wide.rename(columns={"label": "model"}).assign(
        mode=MODE, seq_len=wide["seq_len"].astype(int), status="ok", memory_measure="published"
    )
