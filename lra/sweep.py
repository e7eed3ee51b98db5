"""The end of a sweep (`lra-train -m`, `lra-bench -m`): a summary line, the report, the exit status.

A Hydra callback, configured under `hydra.callbacks.sweep` (conf/hydra/callbacks/sweep_end.yaml). It
runs in the process that launched the sweep, whatever the launcher. The jobs of this sweep are
the job directories Hydra wrote into after it started (a rerun of a sweep reuses finished jobs,
which still count); the report covers every record under the sweep directory.

Hydra calls no callback when Ctrl-C ends a sweep, so the callback remembers the sweep under way,
and lra.cli prints its summary line (`interrupted_sweep`): the report is left for the rerun.
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
    """One job directory of a sweep: its records, whether they were written by an earlier run, and
    why its records file could not be read (a foreign or damaged one), if it could not."""

    path: Path
    records: list[dict[str, Any]]
    reused: bool
    unreadable: str | None = None


def sweep_jobs(sweep: Path) -> list[Job]:
    """The jobs of the sweep started last in `sweep`: directories whose Hydra config was written since."""
    started = (sweep / STARTED).stat().st_mtime
    jobs = []
    for config in sorted(sweep.rglob(".hydra/overrides.yaml")):
        if config.stat().st_mtime < started:
            continue  # a job of an earlier sweep into the same directory
        path = config.parent.parent
        records_file = path / RECORDS_FILE
        reused = records_file.exists() and records_file.stat().st_mtime < started
        try:
            jobs.append(Job(path, read_records(records_file) if records_file.exists() else [], reused))
        except LRAError as error:
            jobs.append(Job(path, [], reused, unreadable=str(error)))
    return jobs


def summary(prog: str, jobs: list[Job], interrupted: bool = False) -> tuple[str, bool]:
    """One line counting the sweep's records by status, and whether the sweep failed (a `failed`
    record, a job that wrote none, or one whose records cannot be read). Of a sweep `interrupted`, the
    jobs without records are those it interrupted."""
    counts = Counter(record["status"] for job in jobs for record in job.records)
    unreadable = [job.unreadable for job in jobs if job.unreadable]
    silent = sum(1 for job in jobs if not job.records and not job.unreadable)
    reused = sum(1 for job in jobs if job.reused)
    parts = [f"{counts[status]} {status}" for status in STATUSES]
    sweep = f"sweep interrupted, {len(jobs)} jobs started" if interrupted else f"sweep of {len(jobs)} jobs"
    line = f"{prog}: {sweep}, {counts.total()} records: {', '.join(parts)}"
    if reused:
        line += f"; {reused} jobs finished before, not rerun"
    if silent:
        line += f"; {silent} jobs {'interrupted' if interrupted else 'wrote no records'}"
    if unreadable:
        line += f"; {len(unreadable)} jobs' records unreadable, e.g. {unreadable[0]}"
    return line, bool(counts["failed"] or silent or unreadable)


def interrupted_sweep(prog: str) -> str | None:
    """After Ctrl-C: print the summary line of the sweep under way in this process, and return the
    line that says how to resume it; None when no sweep is under way."""
    sweep, SweepEnd.running = SweepEnd.running, None
    if sweep is None:
        return None
    print(summary(prog, sweep_jobs(sweep), interrupted=True)[0])
    return (f"interrupted; rerun the same command with hydra.sweep.dir={sweep} to resume the sweep: "
            "finished jobs are skipped, unfinished ones resume")


class SweepEnd(Callback):
    """Marks a sweep's start; at its end writes the report (unless report=false) into `out`
    (default: the sweep directory), prints the summary line, and exits 1 if a job failed."""

    running: Path | None = None  # the directory of the sweep under way in this process

    def __init__(self, prog: str, report: bool = True, out: str | None = None, reference: str | None = None) -> None:
        self.prog, self.report, self.out, self.reference = prog, report, out, reference

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        sweep.mkdir(parents=True, exist_ok=True)
        (sweep / STARTED).touch()
        SweepEnd.running = sweep

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep, SweepEnd.running = Path(config.hydra.sweep.dir), None
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
