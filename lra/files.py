"""File-system guards shared by the runners and the data loaders."""

from __future__ import annotations

import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import FileLock, Timeout

log = logging.getLogger("lra.files")
LOCK_FILE = ".lock"


def atomic_write(path: Path, write: Callable[[Any], object], mode: str = "w") -> None:
    """Write a file via `write(file)` to a temporary name beside it, then rename it into place.

    A reader, or a crash, never meets a half-written file; once this returns the file survives a
    power cut too (file and directory synced). The temporary file is created as an ordinary file
    is (0666 less the umask), so the file gets the usual permissions without reading the umask.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _sync_directory(path.parent)


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
    """Hold the lock of `directory` (a file lock on directory/.lock) inside the block.

    Processes that want the same directory take turns: parallel jobs generating the same data, or
    two sweeps reaching the same job directory. The lock goes with the process, even on SIGKILL.
    """
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(directory / LOCK_FILE)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        log.info("waiting for another process working in %s", directory)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
