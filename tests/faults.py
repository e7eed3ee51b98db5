"""What every fault-injection test asserts of a command that met bad input or a fault: its exit
status, one line of output naming the key or path at fault, no traceback, and no partial files;
and the file-system faults such a command can be run under (`confined`)."""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

TEMPORARY = ("*.tmp", "*.tmp-*")  # the names atomic writes stage under (lra.files, tasks/)


def one_error_line(result: subprocess.CompletedProcess, prog: str, *naming: str, code: int = 2) -> str:
    """The one line `result` printed on stderr, `prog: ...`, after checking the exit status, that no
    traceback was printed, and that the line names each of `naming`."""
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    [line] = lines
    assert line.startswith(f"{prog}: "), line
    for name in naming:
        assert str(name) in line, (name, line)
    return line


def files_under(root: Path) -> set[str]:
    """Every file under `root`, relative to it (empty when `root` does not exist)."""
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()} if root.exists() else set()


def temporary_files(root: Path) -> list[Path]:
    """Files and directories under `root` left by interrupted atomic writes."""
    return sorted(path for pattern in TEMPORARY for path in root.rglob(pattern))


# What `confined` does, tried in a private mount namespace of its own (on the namespace's view of /tmp alone).
PROBE = "mount --bind /tmp /tmp && mount -o remount,bind,ro /tmp && mount -t tmpfs -o size=16k tmpfs /tmp"
# The capabilities that let root read and write whatever the permission bits say.
OVERRIDES = "-dac_override,-dac_read_search"


def confined(argv: list[str], *, read_only: Iterable[Path] = (), tiny: Mapping[Path, str] | None = None,
             obey_modes: bool = False) -> list[str]:
    """`argv` as a command line that runs it with each of `read_only` mounted read-only, a fresh file
    system of the given size (e.g. "64k") mounted on each directory of `tiny` (a disk that fills up),
    and with `obey_modes` the permission bits binding root too (its capabilities to override them
    dropped). Root ignores permission bits, so `chmod` alone cannot make these faults where tests run
    as root. The mounts are the command's own (a private mount namespace, in a user namespace: no
    privilege needed) and end with it: what it left on a tiny file system is listed for `left_on`.
    Skips the test where the system allows neither."""
    command = list(argv)
    if obey_modes and os.geteuid() == 0:
        _require("setpriv", f"--inh-caps={OVERRIDES}", f"--bounding-set={OVERRIDES}", "true")
        command = ["setpriv", f"--inh-caps={OVERRIDES}", f"--bounding-set={OVERRIDES}", *command]
    frozen, tiny = [shlex.quote(str(path)) for path in read_only], dict(tiny or {})
    if not frozen and not tiny:
        return command
    _require("unshare", "-rm", "sh", "-c", PROBE)
    mounts = [f"mount --bind {path} {path} && mount -o remount,bind,ro {path}" for path in frozen]
    mounts += [f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(path))}" for path, size in tiny.items()]
    listings = [f"(cd {shlex.quote(str(path))} && find . -mindepth 1) > {shlex.quote(str(_listing(path)))}"
                for path in tiny]
    script = "; ".join([" && ".join(mounts) + " || exit 125", '"$@"', "status=$?", *listings, "exit $status"])
    return ["unshare", "-rm", "sh", "-c", script, "sh", *command]


def left_on(tiny: Path) -> list[str]:
    """What a `confined` command left on its tiny file system `tiny` (paths relative to it, as
    `./name`), which went with the command."""
    return _listing(tiny).read_text().splitlines()


def _listing(tiny: Path) -> Path:
    """Where `confined` lists what a command left on its tiny file system: a file beside it."""
    return tiny.with_name(f"{tiny.name}.left")


@functools.cache
def _works(*probe: str) -> bool:
    """Whether the command line `probe` runs and succeeds here."""
    try:
        return subprocess.run(probe, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _require(*probe: str) -> None:
    """Skip the test, saying why, unless the command line `probe` works here."""
    if not _works(*probe):
        pytest.skip(f"`{shlex.join(probe)}` does not work here: cannot confine a command to make a file-system fault")
