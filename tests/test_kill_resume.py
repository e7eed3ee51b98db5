"""SIGKILL a real lra-train process, or a whole sweep, after a checkpoint; rerun the same command:
only the unfinished work is done again, to the same result. Slow: Ctrl-C (SIGINT) of a real run,
which stops it in one line; SIGKILL while it writes a checkpoint or generated data, whose temporary
the rerun removes.

The killed command runs in a process of its own; the uninterrupted runs it is compared with, and the
reruns, run the same command line in this process (conftest.run_main)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from lra import checkpoint
from lra.records import read_records
from tests.conftest import REPO, TINY, run_main
from tests.faults import one_error_line, temporary_files
from tests.test_faults_interrupt import run_figures

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


def straight_figures(tmp_path: Path, extra: list[str]) -> dict:
    """The figures of an uninterrupted run of ARGS + `extra`, with data of its own."""
    run_dir = tmp_path / "straight"
    result = run_main("runners.train", *arguments(run_dir, tmp_path / "straight-data"), *extra)
    assert result.returncode == 0, result.stderr
    return run_figures(run_dir)


def wait_for(seen: Callable[[], bool], process: subprocess.Popen, timeout: float = 300) -> None:
    """Until `seen()` or the process ends (or the timeout passes), looking every millisecond."""
    deadline = time.monotonic() + timeout
    while not seen() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)


def killed_while_writing(args: list[str], directory: Path, root: Path, attempts: int = 10) -> None:
    """Start lra-train with `args` until a SIGKILL sent as soon as a temporary appears in `directory`
    lands while it is still there, leaving it under `root`."""
    for _ in range(attempts):
        process = subprocess.Popen(command(args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: any(directory.glob(".*.tmp")), process)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if temporary_files(root):
            return
    raise AssertionError(f"no kill landed while a temporary was in {directory}")


@pytest.mark.slow
def test_ctrl_c_stops_a_real_run_in_one_line_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path: Path):
    expected = straight_figures(tmp_path, [])
    run_dir, data = tmp_path / "interrupted", tmp_path / "data"
    # Ctrl-C's default action, which a shell's background job (pytest run with `&`) would have ignored
    process = subprocess.Popen(command(arguments(run_dir, data)), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = run_dir / "checkpoints" / checkpoint.LAST
    wait_for(last.exists, process)
    os.kill(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    line = one_error_line(subprocess.CompletedProcess(process.args, process.returncode, "", stderr), "lra-train",
                          f"rerun the same command with hydra.run.dir={run_dir} to resume", code=130)
    step = int(re.fullmatch(rf"lra-train: interrupted at step (\d+), which is saved in {last};.*", line).group(1))
    assert checkpoint.load(last)["run_state"]["step"] == step < STEPS, "Ctrl-C should land mid-run"
    assert not (run_dir / "records.jsonl").exists() and temporary_files(tmp_path) == []

    rerun = run_main("runners.train", *arguments(run_dir, data))
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed from {last} at step {step}" in rerun.stdout
    assert run_figures(run_dir) == expected


# (what the killed run writes, its overrides that make those writes take a while, the folder it writes in)
KILLED_WRITES = {
    "checkpoint": (["model.dim=256", "model.mlp_dim=1024", "trainer.checkpoint_every=5"], "killed/checkpoints"),
    "generated data": (["task.generate.train=20000"], "data/listops-smoke"),
}


@pytest.mark.slow
@pytest.mark.parametrize("writing", KILLED_WRITES)
def test_a_run_killed_while_writing_is_cleaned_and_finished_by_its_rerun(tmp_path: Path, writing: str):
    overrides, folder = KILLED_WRITES[writing]
    expected = straight_figures(tmp_path, overrides)
    run_dir, data, written = tmp_path / "killed", tmp_path / "data", tmp_path / folder
    killed_while_writing([*arguments(run_dir, data), *overrides], written, tmp_path)
    assert not (run_dir / "records.jsonl").exists()

    rerun = run_main("runners.train", *arguments(run_dir, data), *overrides)
    assert rerun.returncode == 0, rerun.stderr
    assert f"temporaries of interrupted writes from {written}" in rerun.stdout
    assert temporary_files(tmp_path) == []
    assert run_figures(run_dir) == expected
