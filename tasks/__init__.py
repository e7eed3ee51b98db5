"""The task registry: every module in this package that defines a task registers it on import.

A task module registers a loader `load(config, root, generate, progress) -> TaskData` with its
config dataclass (a subclass of lra.config.TaskConfig).

Loading reads data.root and writes there only to generate missing data: its lock and token caches
go to a stand-in directory when it is not writable (lra.files.data_home), so a complete release on
a read-only mount loads as any other. An OS error while loading is one line naming the path.
"""

from __future__ import annotations

import errno
import importlib
import os
import pkgutil
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from lra.config import TaskConfig
from lra.errors import LRAError
from lra.files import check_readable_directory, data_home, describe_os_error, exclusive, naming
from lra.registry import Registry
from tasks.batching import TaskData

TASKS: Registry[Callable[..., TaskData]] = Registry("task")
register_task = TASKS.register
REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS)  # the file system's "you may not write here"


def load_task(task: DictConfig, data: DictConfig, progress: bool = True) -> TaskData:
    """Load (generating first, where the task can and data.generate allows) the configured task.

    Jobs of a parallel sweep load one at a time, so that one generates and caches while the others
    wait and then read what it wrote.
    """
    config = task_config(task)
    loader, _ = TASKS.get(config.name)
    root = Path(data.root)
    try:
        check_readable_directory(root)
    except OSError as error:
        raise LRAError(f"data.root={describe_os_error(error)}") from error
    home = data_home(root)
    try:
        with exclusive(home) if home is not None else nullcontext(), naming(root):
            return loader(config, root, generate=data.generate, progress=progress)
    except OSError as error:
        raise LRAError(load_error(error, root, writable=home == root)) from error


def load_error(error: OSError, root: Path, writable: bool) -> str:
    """The line for an OS error met loading from `root`, `path: cause`, and what to do when the
    error is data.root refusing the data a loader generates (it is not `writable`)."""
    line = describe_os_error(error)
    path = Path(os.path.abspath(str(error.filename)))
    if not writable and error.errno in REFUSED and path.is_relative_to(os.path.abspath(root)):
        line += (f"; data.root={root} is not writable, so the task's missing data cannot be generated there: "
                 "point data.root at a writable directory, or generate the data elsewhere "
                 "(`lra-data ... --out DIR`) and point data.root there")
    return line


def task_config(task: DictConfig) -> TaskConfig:
    """The task's config as its dataclass, whose class-level facts (vocab_size, towers) need no data."""
    return OmegaConf.to_object(task)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
