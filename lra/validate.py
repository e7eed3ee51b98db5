"""Bad values fail before anything is written: a Hydra callback that checks the composed config
before Hydra creates a run's directory, configured under `hydra.callbacks.check`
(conf/hydra/callbacks/checked.yaml).

A single run's config is checked whole, by the entry point's own check (`check`, a function's
dotted path: ranges, and keys that must fit together). A sweep's config at its start holds the
values every job shares (its unswept keys), so only their ranges are checked there: whether keys
fit together may hang on a swept one. Each job checks its own config again when it starts, so that
a swept bad value fails that job alone (lra.jobs). The line is `prog: error: ...`, exit status 2.
"""

from __future__ import annotations

from typing import Any, Callable

from hydra.experimental.callback import Callback
from hydra.utils import get_method
from omegaconf import DictConfig

from lra.cli import reported
from lra.config import check_ranges


class CheckConfig(Callback):
    """Checks a run's config (`check`) or a sweep's shared values before Hydra writes anything.

    Exits with SystemExit (through lra.cli.reported): Hydra turns an Exception raised in a callback
    into a warning and goes on."""

    def __init__(self, prog: str, check: str) -> None:
        self.prog = prog
        self.check: Callable[[DictConfig], None] = get_method(check)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with reported(self.prog):
            self.check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with reported(self.prog):
            check_ranges(config)
