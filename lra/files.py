"""File-system guards shared by the runners and the data loaders."""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger("lra.files")
LOCK_FILE = ".lock"


def atomic_write(path: Path, write: Callable[[Any], object], mode: str = "w") -> None:
    """Write a file via `write(file)` to a temporary name beside it, then rename it into place.

    A reader, or a crash, never meets a half-written file; once this returns the file survives a
    power cut too (file and directory synced). The file gets the usual permissions (0666 less the
    umask), not the owner-only ones of a temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _sync_directory(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable; a no-op where a directory cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """Hold the advisory lock of `directory` (on directory/.lock) inside the block.

    Processes that want the same directory take turns: parallel jobs generating the same data, or
    two sweeps reaching the same job directory. The lock goes with the process, even on SIGKILL.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process working in %s", directory)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield
