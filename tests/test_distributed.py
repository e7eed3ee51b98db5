"""torchrun: two processes (gloo, CPU) train one model as one process would with the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lra.records import read_records
from tests.conftest import REPO, TINY, run_main

STEPS = 12
ARGS = [*TINY, "trainer.log_every=1", f"trainer.max_steps={STEPS}", "trainer.eval_every=6",
        "trainer.checkpoint_every=6"]


def losses(run_dir: Path) -> list[float]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [event.value for event in events.Scalars("train/loss")]


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path: Path):
    data = f"data.root={tmp_path / 'data'}"
    single = run_main("runners.train", *ARGS, data, f"hydra.run.dir={tmp_path / 'single'}")  # in this process
    assert single.returncode == 0, single.stderr
    two = subprocess.run(  # no hydra.run.dir: both processes must still name one run directory
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "runners.train",
         *ARGS, data], cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr
    [records_file] = list((tmp_path / "results").rglob("records.jsonl"))
    assert len(list((tmp_path / "results" / "runs" / "train").iterdir())) == 1
    [one], [both] = read_records(tmp_path / "single" / "records.jsonl"), read_records(records_file)

    assert both["metrics"]["processes"] == 2 and one["metrics"]["processes"] == 1
    curve, curve_two = losses(tmp_path / "single"), losses(records_file.parent)
    assert len(curve) == len(curve_two) == STEPS
    assert max(abs(a - b) for a, b in zip(curve, curve_two)) < 1e-4
    assert both["metrics"]["test_accuracy"] == one["metrics"]["test_accuracy"]
    assert both["metrics"]["val_accuracy"] == one["metrics"]["val_accuracy"]

    def tokens_per_step(record: dict) -> float:
        return record["metrics"]["tokens_per_s"] / record["metrics"]["steps_per_s"]

    assert abs(tokens_per_step(both) - tokens_per_step(one)) < 1e-6 * tokens_per_step(one)  # both ranks' tokens


def test_a_batch_that_does_not_split_over_the_processes_is_one_line(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "runners.train",
         *TINY, "trainer.batch_size=15", f"data.root={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode != 0
    assert "lra-train: error: trainer.batch_size: 15 does not split evenly over 2 processes" in result.stderr
    assert not (tmp_path / "run" / "records.jsonl").exists()
