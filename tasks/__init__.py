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

from lra.registry import Registry
from tasks.batching import TaskData

TASKS: Registry[Callable[..., TaskData]] = Registry("task")
register_task = TASKS.register


def load_task(task: DictConfig, data: DictConfig, progress: bool = True) -> TaskData:
    """Load (generating first, where the task can and data.generate allows) the configured task."""
    config = OmegaConf.to_object(task)
    loader, _ = TASKS.get(config.name)
    return loader(config, Path(data.root), generate=data.generate, progress=progress)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
