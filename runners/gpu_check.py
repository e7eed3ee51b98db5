"""`make gpu-check`: validate a GPU machine in under 10 minutes (lra.gpu_check), or rehearse it on the CPU.

    python -m runners.gpu_check [--work DIR] [--summary FILE] [--budget SECONDS]
    GPU_CHECK_DRY=1 python -m runners.gpu_check        # the same checks on the CPU, small

Prints a one-screen summary, writes it (summary.md, summary.json) with every run's data, records and
log under the work directory (emptied first), and on a GPU also to `--summary` (the committed copy).
Exit code 0 when every check passed or was skipped for want of time, 1 when one failed, 2 when there
is no GPU to check (and no dry run asked for).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch

from lra.gpu_check import BUDGET_S, STATUS_FAIL, Setting, run_checks, write_summary

PROG = "gpu-check"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("results/runs/gpu-check"),
                        help="data, runs, logs and the summary (emptied first)")
    parser.add_argument("--summary", type=Path, default=Path("results/gpu-check.md"),
                        help="where a GPU run also writes its summary (not a dry run)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all the checks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    dry = os.environ.get("GPU_CHECK_DRY", "0") not in ("", "0")
    if not dry and not torch.cuda.is_available():
        print(f"{PROG}: error: torch {torch.__version__} sees no CUDA device (GPU_CHECK_DRY=1 rehearses on the CPU)",
              file=sys.stderr)
        return 2
    shutil.rmtree(args.work, ignore_errors=True)
    setting = Setting(out=args.work, dry=dry, budget_s=args.budget)
    checks = run_checks(setting)
    text = write_summary(checks, setting)
    if not dry:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text((args.work / "summary.md").read_text())
    print(text)
    return 1 if any(check.status == STATUS_FAIL for check in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
