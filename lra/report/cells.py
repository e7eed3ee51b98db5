"""Records into cells: the names, orderings and aggregation every table and plot shares.

A cell is one entry of a table (a model on a task, or at a length) aggregated over its records:
the mean of each figure over the records that succeeded, how many did (`n`) and did not
(`failed`), and a status: "ok" when any succeeded, else the commonest failure.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import pandas as pd

from lra.config import FullImpl, full_attention_name

# The two forms of full attention, named as their runs are: the plain one is the LRA paper's
# baseline, the fused one the fastest exact attention torch offers. Every other model name comes
# from the records.
PLAIN, FUSED = full_attention_name(FullImpl.math), full_attention_name(FullImpl.sdpa)
BASELINES = {"plain": PLAIN, "fused": FUSED}
FP32 = "fp32"  # the precision a row's label leaves unsaid
CLEAN = "clean"  # the protocol a row's label leaves unsaid (conf/protocol/)
JOIN = " + "  # between a row label's variant and what was done to it
SETUP_OPEN = " ["  # before what sets a row's runs apart from others of the same name: `full-sdpa [task.max_len=64]`
OURS = "ours"  # the `source` of cells measured here, as opposed to published reference figures
TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")  # LRA's column order
GROUP = ["hardware", "task", "mode", "batch_size"]  # what one efficiency table holds fixed


class Group(NamedTuple):
    """The conditions of one efficiency table: its rows are models, its columns lengths."""

    hardware: str
    task: str
    mode: str
    batch_size: int

    @property
    def title(self) -> str:
        return f"{self.task}, {self.mode} steps, batch {self.batch_size}, hardware {self.hardware}"

    def select(self, cells: pd.DataFrame) -> pd.DataFrame:
        """The rows of `cells` measured under these conditions."""
        return selected(cells, self._asdict())


def selected(frame: pd.DataFrame, conditions: dict[str, Any]) -> pd.DataFrame:
    """The rows of `frame` that hold the value `conditions` names in each of its columns."""
    return frame[(frame[list(conditions)] == pd.Series(conditions)).all(axis=1)]


def groups(cells: pd.DataFrame) -> list[Group]:
    """The efficiency groups present in `cells`, in order of appearance."""
    return [Group(*keys) for keys in cells[GROUP].drop_duplicates().itertuples(index=False)]


def ordered_tasks(tasks: Iterable[str]) -> list[str]:
    """LRA's task order, then any other task alphabetically."""
    tasks = set(tasks)
    return [t for t in TASKS if t in tasks] + sorted(tasks - set(TASKS))


def label(variant: str, techniques: Iterable[str] = (), precision: str = FP32, compression: str | None = None,
          setup: str = "", protocol: str = CLEAN) -> str:
    """A row's name: the attention variant, then ` + ` and each model-level technique, the
    precision unless fp32, the compression if any and the protocol unless clean (e.g.
    `full-sdpa + reversible + bf16`, `local + lra protocol`), so that every table shows a run with
    techniques, or under another protocol, as a row of its own; then, where runs of that name differ
    in more than their seed, what sets this one apart (`full-sdpa [trainer.max_steps=20]`)."""
    extras = [*techniques, *([precision] if precision != FP32 else []), *([compression] if compression else []),
              *([f"{protocol} protocol"] if protocol != CLEAN else [])]
    return JOIN.join([variant, *extras]) + (f"{SETUP_OPEN}{setup}]" if setup else "")


def model_key(model: str) -> tuple[int, str]:
    """Sort key of our rows: the two baselines first, then the others alphabetically; a variant's
    technique rows (`<variant> + ...`) follow it."""
    baselines = list(BASELINES.values())
    variant = model.split(SETUP_OPEN)[0].split(JOIN)[0]
    return (baselines.index(variant) if variant in baselines else len(baselines), model)


def _joined(values: pd.Series) -> str:
    return ", ".join(sorted(values.dropna().astype(str).unique()))


def aggregate(records: pd.DataFrame, keys: list[str], figures: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """One cell per distinct `keys`: n, failed, status, and each named figure aggregated over the
    ok records (pandas named aggregation, "joined" for text); metric columns lose their prefix."""
    flat = records.rename(columns=lambda column: column.removeprefix("metrics."))
    flat = flat.reindex(columns=list(dict.fromkeys([*keys, "status", *(source for source, _ in figures.values())])))
    ok = flat["status"].eq("ok")
    counts = flat.assign(ok=ok).groupby(keys, sort=False, dropna=False).agg(
        n=("ok", "sum"),
        failed=("ok", lambda s: int((~s).sum())),
        status=("status", lambda s: "ok" if s.eq("ok").any() else s.mode().iloc[0]),
    )
    named = {name: (source, _joined if how == "joined" else how) for name, (source, how) in figures.items()}
    values = flat[ok].groupby(keys, sort=False, dropna=False).agg(**named)
    return counts.join(values).reset_index()


def sort_models(cells: pd.DataFrame) -> pd.DataFrame:
    """`cells` with our models in table order (see `model_key`), stable otherwise."""
    order = sorted(cells["model"].unique(), key=model_key)
    return cells.sort_values("model", key=lambda models: models.map(order.index), kind="stable")
