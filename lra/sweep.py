"""The end of a sweep (`lra-train -m`, `lra-bench -m`): a summary line, the report, the exit status.

A Hydra callback, configured under `hydra.callbacks.sweep` (conf/hydra/callbacks/sweep_end.yaml). It
runs in the process that launched the sweep, whatever the launcher. The jobs of this sweep are
the job directories Hydra wrote into after it started (a rerun of a sweep reuses finished jobs,
which still count); the report covers every record under the sweep directory.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lra.errors import LRAError
from lra.records import RECORDS_FILE, STATUSES, read_records
from lra.report.load import load_records
from lra.report.render import write_report

STARTED = ".sweep-started"  # touched in the sweep directory when a sweep starts


@dataclass
class Job:
    """One job directory of a sweep: its records, and whether they were written by an earlier run."""

    path: Path
    records: list[dict[str, Any]]
    reused: bool


def sweep_jobs(sweep: Path) -> list[Job]:
    """The jobs of the sweep started last in `sweep`: directories whose Hydra config was written since."""
    started = (sweep / STARTED).stat().st_mtime
    jobs = []
    for config in sorted(sweep.rglob(".hydra/overrides.yaml")):
        if config.stat().st_mtime < started:
            continue  # a job of an earlier sweep into the same directory
        path = config.parent.parent
        records_file = path / RECORDS_FILE
        records = read_records(records_file) if records_file.exists() else []
        reused = records_file.exists() and records_file.stat().st_mtime < started
        jobs.append(Job(path, records, reused))
    return jobs


def summary(prog: str, jobs: list[Job]) -> tuple[str, bool]:
    """One line counting the sweep's records by status, and whether the sweep failed (a `failed`
    record, or a job that wrote none)."""
    counts = Counter(record["status"] for job in jobs for record in job.records)
    silent = sum(1 for job in jobs if not job.records)
    reused = sum(1 for job in jobs if job.reused)
    parts = [f"{counts[status]} {status}" for status in STATUSES]
    line = f"{prog}: sweep of {len(jobs)} jobs, {counts.total()} records: {', '.join(parts)}"
    if reused:
        line += f"; {reused} jobs finished before, not rerun"
    if silent:
        line += f"; {silent} jobs wrote no records"
    return line, bool(counts["failed"] or silent)


class SweepEnd(Callback):
    """Marks a sweep's start; at its end writes the report (unless report=false) into `out`
    (default: the sweep directory), prints the summary line, and exits 1 if a job failed."""

    def __init__(self, prog: str, report: bool = True, out: str | None = None, reference: str | None = None) -> None:
        self.prog, self.report, self.out, self.reference = prog, report, out, reference

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        sweep.mkdir(parents=True, exist_ok=True)
        (sweep / STARTED).touch()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if self.report:
            self.write_report(sweep)
        line, failed = summary(self.prog, sweep_jobs(sweep))
        print(line)
        if failed:
            raise SystemExit(1)  # Hydra turns an Exception from a callback into a warning; not this

    def write_report(self, sweep: Path) -> None:
        out = Path(self.out) if self.out else sweep
        try:
            paths = write_report(load_records(sweep), out, self.reference)
        except LRAError as error:
            print(f"lra-report: no report of this sweep: {error}", file=sys.stderr)
            return
        print(f"lra-report: wrote {paths['leaderboard.md']}")
