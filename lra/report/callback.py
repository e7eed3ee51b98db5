"""A Hydra callback: after a multirun (`lra-train -m`, `lra-bench -m`), the report of its records.

Configured under `hydra.callbacks.report` (conf/train.yaml). A sweep whose jobs all failed before
writing a record gets one line saying so, not a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lra.errors import LRAError
from lra.report.load import load_records
from lra.report.render import write_report


class ReportCallback(Callback):
    """Writes the report of every record under the sweep directory into `out` (default: that directory)."""

    def __init__(self, enabled: bool = True, out: str | None = None, reference: str | None = None) -> None:
        self.enabled, self.out, self.reference = enabled, out, reference

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        sweep = Path(config.hydra.sweep.dir)
        out = Path(self.out) if self.out else sweep
        try:
            paths = write_report(load_records(sweep), out, self.reference)
        except LRAError as error:
            print(f"lra-report: no report of this sweep: {error}", file=sys.stderr)
            return
        print(f"lra-report: wrote {paths['leaderboard.md']}")
