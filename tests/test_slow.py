"""Slow checks (`make test-slow`): the default run as a user starts it, and the compiled path."""

from __future__ import annotations

from pathlib import Path

import pytest

from lra.records import read_records
from models.attention import list_attention
from runners.train import train_run
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow


def test_default_run_learns_well_above_the_majority_class(tmp_path: Path):
    result = run_cli(
        "runners.train", "trainer.progress=false", f"data.root={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    [record] = read_records(tmp_path / "run" / "records.jsonl")
    metrics = record["metrics"]
    assert record["status"] == "ok" and metrics["steps"] == 2000
    assert metrics["test_accuracy"] > metrics["test_majority_rate"] + 0.15


def test_pathfinder_on_the_cpu_profile_generates_its_images_and_trains(tmp_path: Path):
    result = run_cli(
        "runners.train", "task=pathfinder", "trainer.progress=false", f"data.root={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    [record] = read_records(tmp_path / "run" / "records.jsonl")
    assert record["status"] == "ok" and record["metrics"]["steps"] == 1000
    assert len(list((tmp_path / "data" / "pathfinder32" / "curv_contour_length_14" / "metadata").glob("*.npy"))) == 10


@pytest.mark.parametrize("name", list_attention())
def test_compiled_model_trains_like_the_eager_one(tiny_cfg, tmp_path: Path, name):
    eager = train_run(tiny_cfg(f"model={name}"), tmp_path / "eager")
    compiled = train_run(tiny_cfg(f"model={name}", "hardware.compile=true"), tmp_path / "compiled")
    assert compiled["status"] == "ok"
    assert compiled["metrics"]["train_loss"] == pytest.approx(eager["metrics"]["train_loss"], abs=1e-3)


def test_gpu_check_rehearsed_on_the_cpu_runs_every_check_and_writes_its_summary(tmp_path: Path):
    work = tmp_path / "gpu-check"
    result = run_cli("runners.gpu_check", "--work", str(work), "--summary", str(tmp_path / "gpu-check.md"), cwd=REPO,
                     env={"GPU_CHECK_DRY": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[1]: line.split()[0] for line in result.stdout.splitlines()[2:] if line.strip()}
    assert rows == {"variants": "ok", "SDPA": "ok", "task": "ok", "bench": "ok", "h200": "skipped"}
    assert (work / "summary.md").read_text().count("\n") >= 7 and (work / "summary.json").exists()
    assert len(list((work / "runs").glob("*/records.jsonl"))) == 7  # every task trained
    assert not (tmp_path / "gpu-check.md").exists()  # a rehearsal is not the committed summary of a GPU


def test_gpu_check_without_a_gpu_says_so_in_one_line(tmp_path: Path):
    result = run_cli("runners.gpu_check", "--work", str(tmp_path / "w"), cwd=REPO)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "sees no CUDA device" in result.stderr and "GPU_CHECK_DRY=1" in result.stderr
