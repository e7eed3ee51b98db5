"""SIGKILL a real lra-train process, or a whole sweep, after a checkpoint; rerun the same command:
only the unfinished work is done again, to the same result.

The killed command runs in a process of its own; the uninterrupted runs it is compared with, and the
reruns, run the same command line in this process (conftest.run_main)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lra import checkpoint
from lra.records import read_records
from tests.conftest import REPO, TINY, run_main

# Long enough that a kill seen soon after the first checkpoint lands mid-run.
STEPS = 60
ARGS = [*TINY, f"trainer.max_steps={STEPS}", "trainer.eval_every=30", "trainer.checkpoint_every=10"]


def arguments(run_dir: Path, data: Path) -> list[str]:
    return [*ARGS, f"data.root={data}", f"hydra.run.dir={run_dir}"]


def command(arguments: list[str]) -> list[str]:
    """The command line of lra-train with `arguments`, as a process of its own."""
    return [sys.executable, "-m", "runners.train", *arguments]


def test_killed_run_resumes_to_the_same_result(tmp_path: Path):
    data = tmp_path / "data"
    assert run_main("runners.train", *arguments(tmp_path / "straight", data)).returncode == 0
    straight = read_records(tmp_path / "straight" / "records.jsonl")[0]

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(command(arguments(killed_dir, data)), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed_dir / "checkpoints" / checkpoint.LAST
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    saved_step = checkpoint.load(last)["run_state"]["step"]
    assert 0 < saved_step < STEPS, "the kill should land mid-run"
    assert not (killed_dir / "records.jsonl").exists()

    rerun = run_main("runners.train", *arguments(killed_dir, data))
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed from {last} at step" in (killed_dir / "train.log").read_text()
    resumed = read_records(killed_dir / "records.jsonl")[0]
    assert resumed["metrics"]["steps"] == straight["metrics"]["steps"] == STEPS
    assert abs(resumed["metrics"]["test_accuracy"] - straight["metrics"]["test_accuracy"]) <= 0.05


def sweep_arguments(sweep: Path, data: Path) -> list[str]:
    return ["-m", "model=full,linear,local", *ARGS, f"data.root={data}", f"hydra.sweep.dir={sweep}",
            "hydra.callbacks.sweep.report=false"]


def job_records(sweep: Path) -> dict[str, dict]:
    return {path.parent.name: read_records(path)[0] for path in sweep.rglob("records.jsonl")}


def test_a_killed_sweep_reruns_only_its_unfinished_jobs_to_the_same_records(tmp_path: Path):
    data = tmp_path / "data"
    straight = run_main("runners.train", *sweep_arguments(tmp_path / "straight", data))
    assert straight.returncode == 0, straight.stderr

    sweep = tmp_path / "killed"
    process = subprocess.Popen(command(sweep_arguments(sweep, data)), cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:  # the first job done, the second mid-run
        if len(job_records(sweep)) == 1 and len(list(sweep.glob(f"*/checkpoints/{checkpoint.LAST}"))) == 2:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and everything it started
    process.wait()
    assert len(job_records(sweep)) == 1, "the kill should land in the second job"

    rerun = run_main("runners.train", *sweep_arguments(sweep, data))
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.count("already finished for this config") == 1
    assert rerun.stdout.count("resumed from") == 1
    assert "sweep of 3 jobs, 3 records: 3 ok" in rerun.stdout and "1 jobs finished before, not rerun" in rerun.stdout
    expected, resumed = job_records(tmp_path / "straight"), job_records(sweep)
    assert expected.keys() == resumed.keys()  # the same jobs, in directories named by their configs
    for name, record in expected.items():
        assert (resumed[name]["status"], resumed[name]["metrics"]["steps"]) == ("ok", STEPS)
        assert abs(resumed[name]["metrics"]["test_accuracy"] - record["metrics"]["test_accuracy"]) <= 0.05
