"""One job of a run or a sweep: resumable, isolated from its siblings' faults, never half-written.

A job owns its run directory while it runs (lra.files.exclusive). Before working it looks at the
records already there:

- records of this config, all finished (no `failed` one): the job is done, and is skipped;
- records of another config: the directory belongs to another run; refuse (force=true replaces it);
- otherwise (none, or a `failed` one): run; a train job resumes from its last checkpoint.

In a sweep, a job that raises writes records saying so (`failed`, or `oom` when it ran out of
memory) with a one-line error, and returns: the sweep goes on to the next job. The error of a
refusal of the file system names the path and the cause (`path: No space left on device`); where
even those records cannot be written, the job logs why and the sweep counts it as failed. A job
refused because its directory holds another config's records logs why and writes nothing there.
In a single run a user error (bad input, or the file system's refusal) is still one line with no
records written (lra.cli).
"""

from __future__ import annotations

import logging
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from lra import distributed
from lra.cli import USER_ERRORS, describe
from lra.errors import LRAError, one_line
from lra.files import exclusive, remove_stale_temporaries
from lra.measure import is_out_of_memory
from lra.records import RECORDS_FILE, config_hash, read_records, write_records

log = logging.getLogger("lra.jobs")
Records = list[dict[str, Any]]


def finished(records: Records, expected: int) -> bool:
    """Whether `records` are a whole job's: `expected` of them (at least one) and none `failed`."""
    return 0 < len(records) == expected and all(record["status"] != "failed" for record in records)


def previous_records(run_dir: Path, run_hash: str, force: bool, outputs: tuple[str, ...],
                     directory_key: str = "hydra.run.dir") -> Records:
    """The records this config left in `run_dir` before (none after force=true, which deletes
    them and `outputs`); LRAError when they are another config's, naming the key that chooses
    another directory (`directory_key`: in a sweep, hydra.sweep.dir)."""
    path = run_dir / RECORDS_FILE
    if force:
        for name in (RECORDS_FILE, *outputs):
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        return []
    records = read_records(path) if path.exists() else []
    others = {record.get("config_hash") for record in records} - {run_hash}
    if others:
        raise LRAError(
            f"{path}: records of another config (hash {', '.join(sorted(map(str, others)))}; this run {run_hash}); "
            f"force=true replaces them, or choose another {directory_key}"
        )
    return records


def run_job(
    cfg: DictConfig,
    run_dir: Path,
    *,
    expected: int,
    work: Callable[[Records], Records],
    failure: Callable[[str, str], Records],
    outputs: tuple[str, ...] = (),
    isolate: bool,
) -> Records:
    """Run `work(previous records)` in `run_dir` unless this config's `expected` records are there.

    `failure(status, error)` makes the records of a job that raised; `isolate` (a sweep) turns
    every error into them, otherwise user errors propagate. `outputs`: what force=true deletes
    besides the records; the temporaries of writes cut short are removed from them and `run_dir`.
    In a distributed job rank 0 alone locks, looks, deletes and writes.
    """
    run_hash = config_hash(cfg)
    writes = distributed.is_main()
    with exclusive(run_dir) if writes else nullcontext():
        if writes:  # what writes cut short left: every writer here holds this lock, so none is at work
            for directory in (run_dir, *(run_dir / name for name in outputs)):
                remove_stale_temporaries(directory, locked=True)
        try:
            directory_key = "hydra.sweep.dir" if isolate else "hydra.run.dir"
            previous = distributed.on_main(
                lambda: previous_records(run_dir, run_hash, cfg.force, outputs, directory_key))
        except USER_ERRORS as error:  # the directory is another run's, or its records unreadable
            if not isolate:
                raise
            message = describe(error)
            log.error("job not run: %s", message)
            return failure("failed", message)  # not written over what is there
        if finished(previous, expected):
            log.info("%s: already finished for this config (%s); skipped (force=true runs it again)",
                     run_dir / RECORDS_FILE, run_hash)
            return previous
        try:
            return work(previous)
        except Exception as error:
            user_error = isinstance(error, USER_ERRORS)
            if user_error and not isolate:
                raise
            status = "oom" if is_out_of_memory(error) else "failed"
            message = describe(error) if user_error else one_line(f"{type(error).__name__}: {error}")
            log.error("job failed (%s): %s", status, message, exc_info=status == "failed" and not user_error)
            records = failure(status, message)
            if writes:
                try:
                    write_records(run_dir, records)
                except OSError as unwritten:  # the disk that failed the job fails its records too
                    log.error("records of the failed job not written: %s", describe(unwritten))
            return records

