"""The task registry: every module in this package that defines a task registers it on import.

A task module registers a loader `load(config, root, generate, progress) -> TaskData` with its
config dataclass (a subclass of lra.config.TaskConfig).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from lra.config import TaskConfig
from lra.files import exclusive
from lra.registry import Registry
from tasks.batching import TaskData

TASKS: Registry[Callable[..., TaskData]] = Registry("task")
register_task = TASKS.register


def load_task(task: DictConfig, data: DictConfig, progress: bool = True) -> TaskData:
    """Load (generating first, where the task can and data.generate allows) the configured task.

    Jobs of a parallel sweep load one at a time, so that one generates and caches while the others
    wait and then read what it wrote.
    """
    config = task_config(task)
    loader, _ = TASKS.get(config.name)
    with exclusive(Path(data.root)):
        return loader(config, Path(data.root), generate=data.generate, progress=progress)


def task_config(task: DictConfig) -> TaskConfig:
    """The task's config as its dataclass, whose class-level facts (vocab_size, towers) need no data."""
    return OmegaConf.to_object(task)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
