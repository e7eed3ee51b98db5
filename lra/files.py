"""File-system guards shared by the runners and the data loaders.

Reading needs no write access. A data directory (data.root) holds its lock (`.lock`) and its token
caches (`.cache/`, tasks.cache) itself when this process may write there; otherwise, as for an
unpacked LRA release on a read-only mount, a stand-in directory of the user's cache does, with the
same layout: `$XDG_CACHE_HOME/lra-bench/<name>-<hash of its resolved path>` (`~/.cache` when
XDG_CACHE_HOME is unset). Where that cannot be written either, nothing is: no lock (no job can
write the data, so none needs to wait) and no cache (each load builds the splits in memory).

When the file system refuses (no permission, a read-only mount, a full disk, a file where a
directory should be), the error reaches the command line as one line, `path: cause`
(`describe_os_error`); a failed write names the file it was writing (`naming`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import FileLock, Timeout

from lra.errors import LRAError

log = logging.getLogger("lra.files")
LOCK_FILE = ".lock"
USER_CACHE = "lra-bench"  # the folder of the user's cache dir that stands in for unwritable data directories


def atomic_write(path: Path, write: Callable[[Any], object], mode: str = "w") -> None:
    """Write a file via `write(file)` to a temporary name beside it, then rename it into place.

    A reader, or a crash, never meets a half-written file; once this returns the file survives a
    power cut too (file and directory synced). The temporary file is created as an ordinary file
    is (0666 less the umask), so the file gets the usual permissions without reading the umask.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temporary_name(path.name, uuid.uuid4().hex))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with naming(path), os.fdopen(fd, mode) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C too: nothing half-written stays
        tmp.unlink(missing_ok=True)
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


TEMPORARY = ".*.tmp"  # the names `temporary_name` gives
_WRITER = re.compile(r"\.(\d{1,9})\.tmp$")  # the writer's process id in such a name


def temporary_name(name: str, tag: str = "") -> str:
    """The hidden name under which a write of `name` is staged beside it, `.<name>[.<tag>].<pid>.tmp`:
    the writer's process id last, so that `remove_stale_temporaries` can tell a dead writer's from a live one's."""
    return f".{name}.{tag + '.' if tag else ''}{os.getpid()}.tmp"


def remove_stale_temporaries(directory: Path, *, locked: bool = False) -> None:
    """Remove what interrupted writes left in `directory`: the temporaries (`temporary_name`, files
    or folders) whose writers are gone; log one line saying what went and how many MB.

    A temporary that a live process is writing must stay. With `locked` the caller holds a lock that
    every writer in `directory` holds while it writes (a run directory's, lra.jobs), so no writer is at
    work and every temporary goes. Otherwise one goes when the process id its name ends with is no live
    process: its writer was killed. A reused process id keeps a dead writer's temporary until the
    directory is cleaned under its lock, or the id is free again; never the other way round. What cannot
    be removed (a directory of someone else's) is left.
    """
    if not directory.is_dir():
        return
    stale = [path for path in directory.glob(TEMPORARY) if locked or not _alive(_writer(path.name))]
    removed, size = [], 0
    for path in stale:
        try:
            freed = _size(path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:  # gone meanwhile, or not ours to remove
            continue
        removed.append(path.name)
        size += freed
    if removed:
        shown = ", ".join(removed[:3]) + (", ..." if len(removed) > 3 else "")
        log.info("removed %d temporaries of interrupted writes from %s (%.1f MB): %s",
                 len(removed), directory, size / 2**20, shown)


def _writer(name: str) -> int | None:
    """The process id a temporary's name ends with; None for a name without one (an older version's)."""
    match = _WRITER.search(name)
    return int(match.group(1)) if match else None


def _alive(pid: int | None) -> bool:
    """Whether `pid` is a live process of this machine; True when that cannot be known (no process id,
    or Windows, where signal 0 would be a Ctrl-C)."""
    if pid is None or os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _size(path: Path) -> int:
    """The bytes of a file, or of the files under a folder."""
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(file.stat().st_size for file in files if file.is_file())


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


def os_error_of(error: BaseException) -> OSError | None:
    """`error` if it is an OSError, else the OSError a library raised it over, if any: torch.save
    raises a RuntimeError over a write that failed, logging a ValueError over a log file it cannot
    open. An LRAError, or an error raised `from None`, already says what is wrong."""
    if isinstance(error, OSError):
        return error
    if isinstance(error, LRAError):
        return None
    below = error.__cause__ if error.__suppress_context__ else error.__context__
    return below if isinstance(below, OSError) else None


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Inside the block, an OS error that names no file is raised again naming `path`.

    A write() or flush() that fails (a full disk) names no file, and a library writing through a
    Python file may raise its own error over it (os_error_of); the user needs to know which file.
    """
    try:
        yield
    except Exception as error:
        cause = os_error_of(error)
        if cause is None or cause is error and cause.filename is not None:
            raise
        named = cause.filename if cause.filename is not None else str(path)
        raise OSError(cause.errno, cause.strerror or str(cause), named) from error


def describe_os_error(error: OSError) -> str:
    """`path: cause` on one line: the cause as the system words it ("No space left on device",
    "Read-only file system"), but said plainly where a file stands where a directory must be."""
    if error.filename is None:
        return " ".join(str(error).split())
    path = Path(str(error.filename))
    where = f"{path} -> {error.filename2}" if error.filename2 is not None else str(path)
    cause = error.strerror or str(error)
    if error.errno in (errno.EEXIST, errno.ENOTDIR):
        blocking = next((p for p in (path, *path.parents) if os.path.exists(p) and not os.path.isdir(p)), None)
        if blocking is not None:
            cause = "not a directory (it is a file)" if blocking == path else f"not a directory ({blocking} is a file)"
    return " ".join(f"{where}: {cause}".split())


def writable(directory: Path) -> bool:
    """Whether this process may create files in `directory`, or create it: the nearest of it and
    its parents that exists is a directory it may write and enter (a read-only mount says no)."""
    existing = next((p for p in (directory, *directory.parents) if os.path.exists(p)), None)
    return existing is not None and os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK)


def user_cache() -> Path:
    """This package's folder of the user's cache dir: $XDG_CACHE_HOME/lra-bench, else ~/.cache/lra-bench."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / USER_CACHE


def data_home(root: Path) -> Path | None:
    """Where data directory `root` keeps its lock and caches: `root` when writable, else its stand-in
    in the user's cache (keyed by its resolved path, so that every job reading it meets the same one),
    else None (see the module docstring)."""
    if writable(root):
        return root
    resolved = Path(root).resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    stand_in = user_cache() / f"{resolved.name or 'root'}-{digest}"
    return stand_in if writable(stand_in) else None


def check_readable_directory(path: Path) -> None:
    """Raise the OSError a read would meet, naming `path`, when `path` exists but is no directory
    this process may list and enter: so the fault is named before a loader mistakes it for missing data."""
    if not path.exists():
        return
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    if not os.access(path, os.R_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
