"""SIGKILL a real lra-train process after a checkpoint, rerun the same command: same steps, same result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lra import checkpoint
from lra.records import read_records
from tests.conftest import REPO, TINY

STEPS = 120
ARGS = [*TINY, f"trainer.max_steps={STEPS}", "trainer.eval_every=40", "trainer.checkpoint_every=20"]


def command(run_dir: Path, data: Path) -> list[str]:
    return [sys.executable, "-m", "runners.train", *ARGS, f"data.root={data}", f"hydra.run.dir={run_dir}"]


def test_killed_run_resumes_to_the_same_result(tmp_path: Path):
    data = tmp_path / "data"
    subprocess.run(command(tmp_path / "straight", data), cwd=REPO, check=True, capture_output=True)
    straight = read_records(tmp_path / "straight" / "records.jsonl")[0]

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(command(killed_dir, data), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed_dir / "checkpoints" / checkpoint.LAST
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    saved_step = checkpoint.load(last)["run_state"]["step"]
    assert 0 < saved_step < STEPS, "the kill should land mid-run"
    assert not (killed_dir / "records.jsonl").exists()

    rerun = subprocess.run(command(killed_dir, data), cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed from {last} at step" in (killed_dir / "train.log").read_text()
    resumed = read_records(killed_dir / "records.jsonl")[0]
    assert resumed["metrics"]["steps"] == straight["metrics"]["steps"] == STEPS
    assert abs(resumed["metrics"]["test_accuracy"] - straight["metrics"]["test_accuracy"]) <= 0.05
