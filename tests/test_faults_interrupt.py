"""Interrupted writes leave no debris, and Ctrl-C ends a command in one line and exit status 130.

What a killed writer left (a temporary whose process id is dead) is removed when its directory is
next written or read; what a live process is writing stays. A damaged cache entry is built again
with one warning. Ctrl-C of a run or a sweep names the command that resumes it, writes no record,
and the rerun ends with the figures of an uninterrupted run. Everything runs in this process
(conftest.run_main); a real signal to a real process is in test_kill_resume.py (slow)."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

from lra import checkpoint
from lra.engine import loop
from lra.files import remove_stale_temporaries
from lra.records import RECORDS_FILE, read_records
from lra.report import load_records, write_report
from runners import bench as bench_runner
from runners import compress as compress_runner
from runners import data as data_runner
from tasks import listops, load_task, pathfinder_draw
from tasks.cache import CACHE_DIR
from tests.conftest import TINY, compose_config, run_main
from tests.faults import one_error_line, temporary_files
from tests.report_fixtures import sample_runs

STEPS = 20  # of a TINY run: validated and saved at steps 10 and 20
SWEEP = ["-m", "model=full,linear,local", *TINY, "hydra.callbacks.sweep.report=false"]


def run_args(run_dir: Path, data: Path) -> list[str]:
    return [*TINY, f"data.root={data}", f"hydra.run.dir={run_dir}"]


def figures(record: dict[str, Any]) -> dict[str, Any]:
    """What a run computed: its final figures and learning curve, without the times they took."""
    metrics = record["metrics"]
    keys = ("steps", "test_accuracy", "test_loss", "val_accuracy", "last_val_accuracy", "train_loss")
    curve = [{key: value for key, value in entry.items() if key != "train_seconds"} for entry in metrics["history"]]
    return {"status": record["status"], **{key: metrics[key] for key in keys}, "history": curve}


def run_figures(run_dir: Path) -> dict[str, Any]:
    [record] = read_records(run_dir / RECORDS_FILE)
    return figures(record)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[str, Any]:
    """The figures of an uninterrupted TINY run, and its run directory."""
    root = tmp_path_factory.mktemp("straight")
    result = run_main("runners.train", *run_args(root / "run", root / "data"))
    assert result.returncode == 0, result.stderr
    return {"figures": run_figures(root / "run"), "run": root / "run"}


@pytest.fixture
def dead_pid() -> int:
    """The process id of a process that has ended: a killed writer's."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The process id of a live process: a writer at work."""
    process = subprocess.Popen(["sleep", "600"])
    yield process.pid
    process.kill()
    process.wait()


@pytest.fixture
def ctrl_c_held():
    """Ctrl-C raising KeyboardInterrupt, as in a terminal, whatever the test runner set."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def plant(path: Path, size: int = 1000) -> Path:
    """A file of `size` bytes at `path`, its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def step_hook(monkeypatch, at: int, action: Callable[[], None]) -> None:
    """Call `action` in the `at`th training step of this process (counted over a sweep's jobs), after the step."""
    real, calls = loop.train_step, []

    def step(*args: Any, **kwargs: Any) -> Any:
        losses = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == at:
            action()
        return losses

    monkeypatch.setattr(loop, "train_step", step)


def ctrl_c() -> None:
    signal.raise_signal(signal.SIGINT)


def keyboard_interrupt() -> None:
    raise KeyboardInterrupt


# -- temporaries of interrupted writes ---------------------------------------------------------------------------


def test_only_temporaries_of_dead_writers_go_unless_the_directory_is_locked(tmp_path: Path, dead_pid, live_pid):
    dead = [tmp_path / f".last.pt.{'ab' * 16}.{dead_pid}.tmp",  # atomic_write's: a random tag, then the pid
            tmp_path / f".last.pt.{'12' * 16}.{dead_pid}.tmp",  # a tag of digits alone
            tmp_path / f".listops-0123.{dead_pid}.tmp"]  # a folder
    for path in dead[:2]:
        plant(path)
    plant(dead[2] / "train.arrow")
    live = [plant(tmp_path / f".basic_val.tsv.{live_pid}.tmp"), plant(tmp_path / f".x.{os.getpid()}.tmp")]
    unknown = plant(tmp_path / f".last.pt.{'cd' * 16}.tmp")  # an older version's name: no process id
    others = [plant(tmp_path / "last.pt"), plant(tmp_path / f"notes.{dead_pid}.tmp"), plant(tmp_path / ".lock")]
    remove_stale_temporaries(tmp_path)
    assert not any(path.exists() for path in dead)
    assert all(path.exists() for path in [*live, unknown, *others])
    remove_stale_temporaries(tmp_path, locked=True)  # no writer can be at work: every temporary goes
    assert sorted(tmp_path.iterdir()) == sorted(others)


def test_a_run_removes_what_killed_writers_left_and_keeps_what_live_ones_write(tmp_path: Path, straight, dead_pid,
                                                                               live_pid):
    data, run = tmp_path / "data", tmp_path / "run"
    listops_dir, cache = data / "listops-smoke", data / CACHE_DIR
    plant(run / "checkpoints" / f".last.pt.{'ab' * 16}.{dead_pid}.tmp", 2**20)
    plant(run / "checkpoints" / f".best.pt.{'cd' * 16}.tmp", 2**20)  # an older version's: the run's lock is held
    plant(run / f".records.jsonl.{'ef' * 16}.{dead_pid}.tmp")
    plant(listops_dir / f".basic_train.tsv.{dead_pid}.tmp")
    plant(cache / f".listops-{'0' * 16}.{dead_pid}.tmp" / "train.arrow")
    live = [plant(listops_dir / f".basic_val.tsv.{live_pid}.tmp"), plant(cache / f".listops-1.{live_pid}.tmp")]
    result = run_main("runners.train", *run_args(run, data))
    assert result.returncode == 0, result.stderr
    assert f"removed 2 temporaries of interrupted writes from {run / 'checkpoints'} (2.0 MB)" in result.stdout
    assert f"removed 1 temporaries of interrupted writes from {run} " in result.stdout
    assert f"removed 1 temporaries of interrupted writes from {listops_dir}" in result.stdout
    assert f"removed 1 temporaries of interrupted writes from {cache}" in result.stdout
    assert temporary_files(tmp_path) == sorted(live)
    assert run_figures(run) == straight["figures"]

    # before loading data that is there, and reading a cache entry that is there
    plant(listops_dir / f".basic_test.tsv.{dead_pid}.tmp")
    plant(cache / f".listops-{'1' * 16}.{dead_pid}.tmp" / "train.arrow")
    again = run_main("runners.train", *run_args(tmp_path / "again", data))
    assert again.returncode == 0, again.stderr
    assert temporary_files(tmp_path) == sorted(live)
    assert run_figures(tmp_path / "again") == straight["figures"]


def test_a_report_removes_what_killed_writes_left(tmp_path: Path, dead_pid, live_pid, caplog):
    records = load_records(sample_runs(tmp_path / "runs"))
    out = tmp_path / "out"
    dead = [plant(out / f".leaderboard.md.{'ab' * 16}.{dead_pid}.tmp"),
            plant(out / "plots" / f".bubble_cpu.png.{'cd' * 16}.{dead_pid}.tmp")]
    live = plant(out / f".leaderboard.csv.{'ef' * 16}.{live_pid}.tmp")
    with caplog.at_level(logging.INFO, logger="lra.files"):
        written = write_report(records, out)
    assert not any(path.exists() for path in dead) and temporary_files(out) == [live]
    assert all(path.exists() for path in written.values())
    assert sorted(record.getMessage().split(" (")[0] for record in caplog.records) == [
        f"removed 1 temporaries of interrupted writes from {out}",
        f"removed 1 temporaries of interrupted writes from {out / 'plots'}"]


def test_pathfinder_generation_removes_what_killed_generations_left(tmp_path: Path, dead_pid, live_pid):
    dead = [tmp_path / f".curv_baseline.{dead_pid}.tmp", tmp_path / f".curv_baseline.old.{dead_pid}.tmp"]
    live = tmp_path / f".curv_contour_length_14.{live_pid}.tmp"
    for folder in [*dead, live]:
        plant(folder / "imgs" / "0" / "sample_0.png")
    written = pathfinder_draw.write_release(tmp_path, resolution=32, difficulty="easy", count=4, workers=1,
                                            progress=False)
    assert not any(folder.exists() for folder in dead) and temporary_files(tmp_path) == [live]
    assert (written / "metadata" / "0.npy").exists()


# -- damaged cache entries ---------------------------------------------------------------------------------------


def truncated(content: bytes) -> bytes:
    return content[: len(content) // 2]


def garbage(content: bytes) -> bytes:
    return random.Random(0).randbytes(len(content))


def empty(content: bytes) -> bytes:
    return b""


@pytest.mark.parametrize("damage", [truncated, garbage, empty, None], ids=["truncated", "garbage", "empty", "gone"])
def test_a_damaged_cache_entry_is_built_again_with_one_warning(tmp_path: Path, straight, damage):
    data = tmp_path / "data"
    cfg = compose_config(*TINY, f"data.root={data}")
    assert len(load_task(cfg.task, cfg.data, progress=False).train) == cfg.task.generate.train  # the entry made
    [entry] = (data / CACHE_DIR).glob("listops-*")
    split = entry / "train.arrow"
    if damage is None:
        split.unlink()
    else:
        split.write_bytes(damage(split.read_bytes()))
    result = run_main("runners.train", *run_args(tmp_path / "run", data))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    warnings = [line for line in result.stdout.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and f"cache entry {entry} is damaged" in warnings[0], warnings
    assert run_figures(tmp_path / "run") == straight["figures"]
    again = run_main("runners.train", *run_args(tmp_path / "again", data))  # the entry is whole again
    assert again.returncode == 0 and "WARNING" not in again.stdout and temporary_files(data) == []


# -- Ctrl-C ------------------------------------------------------------------------------------------------------


def test_ctrl_c_stops_a_run_after_its_step_saved_and_the_rerun_ends_as_an_uninterrupted_run(
        tmp_path: Path, straight, monkeypatch, ctrl_c_held):
    run, data = tmp_path / "run", tmp_path / "data"
    step_hook(monkeypatch, 13, ctrl_c)
    result = run_main("runners.train", *run_args(run, data))
    one_error_line(result, "lra-train", "interrupted at step 13", run / "checkpoints" / "last.pt",
                   f"rerun the same command with hydra.run.dir={run} to resume", code=130)
    assert not (run / RECORDS_FILE).exists() and temporary_files(tmp_path) == []
    assert checkpoint.load(run / "checkpoints" / checkpoint.LAST)["run_state"]["step"] == 13
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the run gave Ctrl-C back

    monkeypatch.undo()
    rerun = run_main("runners.train", *run_args(run, data))
    assert rerun.returncode == 0, rerun.stderr
    assert "at step 13" in rerun.stdout and run_figures(run) == straight["figures"]


def interrupted_save(real: Callable[..., Any]) -> Callable[..., Any]:
    """torch.save, except that the save of step 20's last checkpoint writes half and meets Ctrl-C."""

    def save(state: Any, file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(state, dict) and state.get("run_state", {}).get("step") == STEPS:
            file.write(b"half a checkpoint")
            raise KeyboardInterrupt
        return real(state, file, *args, **kwargs)

    return save


@pytest.mark.parametrize("where, stopped_at", [("step", 12), ("save", STEPS)])
def test_a_second_ctrl_c_stops_at_once_and_the_rerun_resumes_from_the_last_checkpoint(
        tmp_path: Path, straight, monkeypatch, where, stopped_at):
    run, data = tmp_path / "run", tmp_path / "data"
    if where == "step":  # inside the 13th step, as a Ctrl-C that is not held
        real = loop.train_step
        calls = []

        def step(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 13:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(loop, "train_step", step)
    else:
        monkeypatch.setattr(torch, "save", interrupted_save(torch.save))
    result = run_main("runners.train", *run_args(run, data))
    one_error_line(result, "lra-train", f"interrupted at step {stopped_at}; the last checkpoint (step 10) is in "
                   f"{run / 'checkpoints'}", f"hydra.run.dir={run}", code=130)
    assert not (run / RECORDS_FILE).exists() and temporary_files(tmp_path) == []

    monkeypatch.undo()
    rerun = run_main("runners.train", *run_args(run, data))
    assert rerun.returncode == 0, rerun.stderr
    assert "at step 10" in rerun.stdout and run_figures(run) == straight["figures"]


def test_ctrl_c_before_training_names_the_rerun(tmp_path: Path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr("lra.engine.training.load_task", lambda *args, **kwargs: keyboard_interrupt())
    result = run_main("runners.train", *run_args(run, tmp_path / "data"))
    one_error_line(result, "lra-train", f"interrupted before training; rerun the same command with hydra.run.dir={run}",
                   code=130)
    assert not (run / RECORDS_FILE).exists()


def job_figures(sweep: Path) -> dict[str, dict[str, Any]]:
    return {path.parent.name: figures(read_records(path)[0]) for path in sweep.rglob(RECORDS_FILE)}


def test_ctrl_c_in_the_second_job_of_a_sweep_counts_the_first_and_the_rerun_finishes_all(
        tmp_path: Path, monkeypatch, ctrl_c_held):
    data = tmp_path / "data"
    expected = run_main("runners.train", *SWEEP, f"data.root={data}", f"hydra.sweep.dir={tmp_path / 'straight'}")
    assert expected.returncode == 0, expected.stderr

    sweep = tmp_path / "sweep"
    args = [*SWEEP, f"data.root={data}", f"hydra.sweep.dir={sweep}"]
    step_hook(monkeypatch, STEPS + 7, ctrl_c)
    result = run_main("runners.train", *args)
    one_error_line(result, "lra-train", "interrupted at step 7", f"rerun the same command with hydra.sweep.dir={sweep}",
                   "finished jobs are skipped", code=130)
    assert ("lra-train: sweep interrupted, 2 jobs started, 1 records: 1 ok, 0 oom, 0 diverged, 0 failed, 0 skipped; "
            "1 jobs interrupted") in result.stdout
    assert len(job_figures(sweep)) == 1 and temporary_files(tmp_path) == []

    monkeypatch.undo()
    rerun = run_main("runners.train", *args)
    assert rerun.returncode == 0, rerun.stderr
    assert "sweep of 3 jobs, 3 records: 3 ok" in rerun.stdout and "1 jobs finished before, not rerun" in rerun.stdout
    assert rerun.stdout.count("resumed from") == 1 and "at step 7" in rerun.stdout
    assert job_figures(sweep) == job_figures(tmp_path / "straight")


def test_ctrl_c_of_a_bench_keeps_the_points_measured_and_the_rerun_measures_the_rest(tmp_path: Path, monkeypatch):
    run = tmp_path / "run"
    args = ["model=linear", "model.num_layers=1", "model.dim=32", "model.num_heads=2", "model.mlp_dim=64",
            "bench.seq_lens=[16,32]", "bench.modes=[infer]", "bench.min_run_time=0.01", "bench.progress=false",
            f"hydra.run.dir={run}"]
    real, calls = bench_runner.measure_point, []

    def measure(*a: Any, **k: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(bench_runner, "measure_point", measure)
    result = run_main("runners.bench", *args)
    one_error_line(result, "lra-bench", f"interrupted; the 1 records measured so far are in {run / RECORDS_FILE}",
                   f"rerun the same command with hydra.run.dir={run} to resume", code=130)
    monkeypatch.undo()
    rerun = run_main("runners.bench", *args)
    assert rerun.returncode == 0, rerun.stderr
    assert [record["seq_len"] for record in read_records(run / RECORDS_FILE)] == [16, 32]


def test_ctrl_c_of_a_compress_job_keeps_the_models_measured(straight, monkeypatch):
    out = straight["run"] / "compress"
    real, calls = compress_runner.outcome, []

    def outcome(*a: Any, **k: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(compress_runner, "outcome", outcome)
    result = run_main("runners.compress", f"run={straight['run']}", "sparsities=[0.5]", "finetune_steps=1",
                      "batch_size=4", "min_run_time=0.01", "progress=false")
    one_error_line(result, "lra-compress", f"the 1 records measured so far are in {out / RECORDS_FILE}",
                   f"hydra.run.dir={out}", code=130)
    assert len(read_records(out / RECORDS_FILE)) == 1


def test_ctrl_c_of_a_report_names_its_directory(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("runners.report.write_report", lambda *args: keyboard_interrupt())
    out = tmp_path / "out"
    result = run_main("runners.report", f"runs={sample_runs(tmp_path / 'runs')}", f"out={out}")
    one_error_line(result, "lra-report", f"interrupted; each file under {out} is whole",
                   "rerun the same command to write it", code=130)


def data_cli(capsys, *argv: str) -> subprocess.CompletedProcess:
    """lra-data with `argv`, in this process: its exit status and what it printed."""
    with pytest.raises(SystemExit) as done:
        data_runner.cli(list(argv))
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(["lra-data", *argv], done.value.code, printed.out, printed.err)


def test_ctrl_c_of_listops_generation_leaves_nothing_half_written(tmp_path: Path, monkeypatch, capsys):
    real, calls = listops._write_tsv, []

    def write(f: Any, rows: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            f.write("Source\tTarget\r\n( [MAX 1")
            raise KeyboardInterrupt
        real(f, rows)

    monkeypatch.setattr(listops, "_write_tsv", write)
    out = tmp_path / "listops"
    result = data_cli(capsys, "listops", "--out", str(out), "--train", "20", "--val", "5", "--test", "5",
                      "--min-len", "1", "--max-len", "30", "--no-progress")
    one_error_line(result, "lra-data", f"nothing half-written is kept in {out}", "rerun the same command", code=130)
    assert list(out.iterdir()) == []


def test_ctrl_c_of_pathfinder_generation_leaves_nothing_half_written(tmp_path: Path, monkeypatch, capsys):
    def draw(job: Any) -> int:
        (job[0] / pathfinder_draw._image_path(job[4])).write_bytes(b"half an image")
        raise KeyboardInterrupt

    monkeypatch.setattr(pathfinder_draw, "_draw_chunk", draw)
    result = data_cli(capsys, "pathfinder", "--out", str(tmp_path), "--resolution", "32", "--difficulty", "easy",
                      "--count", "4", "--workers", "1", "--no-progress")
    one_error_line(result, "lra-data", f"nothing half-written is kept in {tmp_path}", code=130)
    assert list(tmp_path.iterdir()) == []
