"""Running a Hydra entry point so that bad input ends in one clear line, not a traceback, and so does
Ctrl-C: a line saying what was saved and how to resume, and exit status 130."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from lra.errors import LRAError
from lra.files import describe_os_error, naming, os_error_of
from lra.records import RECORDS_FILE, read_records

# OSError: the file system refused (no permission, a read-only mount, a full disk, a file where a
# directory must be): the user's to fix, so one line naming the path (HYDRA_FULL_ERROR=1 shows where).
USER_ERRORS = (LRAError, HydraException, OmegaConfBaseException, OSError)


def describe(error: BaseException) -> str:
    """One line naming the group, key, file or line at fault and, where known, what is accepted."""
    if isinstance(error, MissingConfigException) and error.options is not None:  # an OSError too
        named = re.search(r"Could not find '([^']*)'", str(error))  # where Hydra leaves missing_cfg_file unset
        group, _, name = (error.missing_cfg_file or (named.group(1) if named else "")).rpartition("/")
        return f"{group}={name}: no such {group}; choose one of: {', '.join(error.options)}"
    if isinstance(error, OSError):
        return describe_os_error(error)
    if isinstance(error, OverrideParseException):
        return _unparsed(error)
    # Hydra raises its own error over OmegaConf's, as the cause or while handling it (a config file
    # that clashes with another: "In 'file': ... raised while composing config:", the key on a later line)
    wrapped = error.__cause__ or (error.__context__ if isinstance(error, HydraException) else None)
    cause = wrapped if isinstance(wrapped, OmegaConfBaseException) else error
    key = getattr(cause, "full_key", None)
    message = (getattr(cause, "msg", None) or str(cause)).splitlines()[0]  # the rest repeats the key
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        message += _known_keys(getattr(cause, "object_type", None))
    line = f"{key}: {message}" if key else message
    where = re.match(r"In '[^']*': ", str(error)) if cause is not error else None
    return " ".join(((where.group(0) if where else "") + line).split())


def _unparsed(error: OverrideParseException) -> str:
    """`override: why`, from Hydra's message less its heading, its pointer under the override and its link."""
    lines = (line.strip() for line in error.message.splitlines())
    why = [line for line in lines if line and error.override not in line and not line.startswith(("^", "See http"))]
    return f"{error.override}: {'; '.join(why) or 'not an override (key=value, +key=value, ++key=value, ~key)'}"


def _known_keys(object_type: Any) -> str:
    if object_type is None or not dataclasses.is_dataclass(object_type):
        return ""
    return "; known keys: " + ", ".join(f.name for f in dataclasses.fields(object_type))


# Read before `run` sets it: whether the user asked for full tracebacks.
_TRACEBACKS = os.environ.get("HYDRA_FULL_ERROR") == "1"


@contextmanager
def reported(prog: str) -> Iterator[None]:
    """Report a user error raised inside as `prog: error: ...` on one line, and exit 2.

    Used around Hydra's composition (by `run`) and inside the job function, so that Hydra does
    not add its own "Error executing job" line. HYDRA_FULL_ERROR=1 keeps the traceback. An OS
    error a library raised its own error over is the user's too (lra.files.os_error_of): logging's,
    when Hydra cannot open the log file of the run directory.
    """
    try:
        yield
    except Exception as error:
        user_error = error if isinstance(error, USER_ERRORS) else os_error_of(error)
        if user_error is None or _TRACEBACKS:
            raise
        print(f"{prog}: error: {describe(user_error)}", file=sys.stderr)
        sys.exit(2)


class CommandParser(argparse.ArgumentParser):
    """The parser of a command that is not a Hydra app (lra-data): its errors are the single line
    `<command>: error: ...`, exit status 2, as a user error inside the command is (`run_command`)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog.split()[0]}: error: {message}\n")


def run_command(args: argparse.Namespace, prog: str, out: Path | None, interrupted: str) -> Any:
    """`args.run(args)`, the subcommand a CommandParser parsed: a user error, or the file system's
    refusal, one line (a failed write that names no file naming `out`), and Ctrl-C `prog: interrupted`."""
    try:
        with reported(prog), naming(out) if out is not None else nullcontext():
            return args.run(args)
    except KeyboardInterrupt:
        if _TRACEBACKS:
            raise
        stop(prog, interrupted)


def run(hydra_main: Callable[[], Any], prog: str) -> None:
    """Call a `@hydra.main` function, asking Hydra to re-raise errors rather than print them; end a
    Ctrl-C with the line of its Interrupted (in a sweep, after the sweep's summary line: lra.sweep)."""
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        with reported(prog):
            hydra_main()
    except KeyboardInterrupt as interrupt:
        if _TRACEBACKS:
            raise
        from lra.sweep import interrupted_sweep  # noqa: PLC0415  (it imports the report, which only a sweep needs)

        resume = interrupted_sweep(prog)
        stop(prog, str(interrupt) if isinstance(interrupt, Interrupted) else resume or "interrupted; nothing was saved")


INTERRUPTED = 130  # the exit status of a command Ctrl-C stopped (128 + SIGINT), as a shell reports one


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the line that says what was saved and how to go on (after the program's name).

    A KeyboardInterrupt still, so that nothing takes it for a failure: a job interrupted writes no
    records (lra.jobs catches Exception alone), and a rerun resumes it."""


def stop(prog: str, line: str) -> NoReturn:
    """End a command that Ctrl-C interrupted: `prog: line` on stderr, and exit status 130."""
    print(f"{prog}: {line}", file=sys.stderr)
    sys.exit(INTERRUPTED)


@contextmanager
def resumable(saved: Callable[[], str]) -> Iterator[None]:
    """Inside a Hydra job: turn Ctrl-C into Interrupted, whose line says what the job saved (its own
    Interrupted's line, else `saved()`) and the command that resumes it: the same one in the same run
    directory, or sweep directory, where what is finished is skipped (lra.jobs)."""
    try:
        yield
    except KeyboardInterrupt as interrupt:
        hydra = HydraConfig.get()
        what = str(interrupt) if isinstance(interrupt, Interrupted) else saved()
        if hydra.mode is RunMode.MULTIRUN:
            how = (f"rerun the same command with hydra.sweep.dir={hydra.sweep.dir} to resume the sweep: "
                   "finished jobs are skipped, this one resumes")
        else:
            how = f"rerun the same command with hydra.run.dir={hydra.runtime.output_dir} to resume"
        raise Interrupted(f"{what}; {how}") from None


def records_kept(run_dir: Path) -> str:
    """What an interrupted job that writes its records one by one (lra-bench, lra-compress) keeps."""
    path = run_dir / RECORDS_FILE
    try:
        count = len(read_records(path)) if path.exists() else 0
    except LRAError as error:  # not the job's own records: it stopped before writing any
        return f"interrupted; no records written ({error})"
    return f"interrupted; the {count} records measured so far are in {path}"
