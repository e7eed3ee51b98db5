"""lra-report: leaderboards (md, html, csv) and plots from every records.jsonl under `runs`, written to `out`.

    lra-report runs=results/runs out=results [reference=lra_paper]
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from lra.cli import Interrupted, reported, run
from lra.config import CONF_DIR
from lra.report import load_records, write_report

PROG = "lra-report"


@hydra.main(config_path=str(CONF_DIR), config_name="report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with reported(PROG):
        try:
            paths = write_report(load_records(Path(cfg.runs)), Path(cfg.out), cfg.reference)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted; each file under {cfg.out} is whole, but some may be an older "
                              "report's; rerun the same command to write it") from None
    print(paths["leaderboard.md"].read_text())
    print(f"wrote {len(paths)} files under {cfg.out}: " + ", ".join(paths))


def cli() -> None:
    run(main, PROG)


if __name__ == "__main__":
    cli()
