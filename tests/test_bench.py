"""lra-bench: one record per (length, mode), FLOPs and memory as counted, out of memory as a result."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from lra.config import BenchMode
from lra.engine.benchmark import fits, largest_batch, make_step, measure, measured, step_flop_count
from lra.engine.inputs import build_model, inputs
from lra.records import read_records
from lra.worker import WorkerDied, WorkerError, run_isolated
from tests.conftest import REPO, compose_config, run_cli, run_main

# The text task's model, shrunk; the bench's own settings made quick.
SMALL = ["model.num_layers=1", "model.dim=32", "model.num_heads=2", "model.mlp_dim=64", "bench.min_run_time=0.01",
         "bench.progress=false"]
CPU = torch.device("cpu")


def bench_config(*overrides: str):
    return compose_config(*SMALL, *overrides, config="bench")


def bench_cli(tmp_path: Path, *overrides: str):
    """lra-bench's entry point, run in this process (conftest.run_main), writing into tmp_path/run."""
    return run_main("runners.bench", *SMALL, *overrides, f"hydra.run.dir={tmp_path / 'run'}")


def statuses(records: list[dict]) -> list[tuple[int, str, str]]:
    return [(r["seq_len"], r["metrics"]["mode"], r["status"]) for r in records]


def test_each_length_and_mode_gets_a_record_with_speed_memory_and_flops(tmp_path: Path):
    result = bench_cli(tmp_path, "model=full_math", "bench.seq_lens=[64,32]")
    assert result.returncode == 0, result.stderr
    records = read_records(tmp_path / "run" / "records.jsonl")
    assert statuses(records) == [(32, "train", "ok"), (32, "infer", "ok"), (64, "train", "ok"), (64, "infer", "ok")]
    for record in records:
        metrics = record["metrics"]
        assert record["kind"] == "bench" and record["model"] == "full-math" and record["task"] == "text"
        assert record["batch_size"] == 2  # the cpu profile's bench batch
        assert metrics["tokens_per_s"] == pytest.approx(metrics["steps_per_s"] * 2 * record["seq_len"])
        assert metrics["memory_measure"] == "live_tensor_bytes" and metrics["peak_memory_mb"] > 0
        assert metrics["peak_rss_mb"] > 50  # the worker process: at least torch itself
        assert metrics["tflops"] == pytest.approx(metrics["flops_per_step"] * metrics["steps_per_s"] / 1e12)
        assert metrics["matmul_tflops"] > 0
    train64, infer64 = records[2]["metrics"], records[3]["metrics"]
    assert train64["peak_memory_mb"] > infer64["peak_memory_mb"]  # gradients and saved activations
    assert train64["flops_per_step"] == 3 * infer64["flops_per_step"]  # backward: twice the forward's products


def test_an_interrupted_bench_resumes_at_its_first_missing_point_and_a_finished_one_is_skipped(tmp_path: Path):
    args = ("model=linear", "bench.seq_lens=[16,32]", "bench.modes=[infer]")
    assert bench_cli(tmp_path, *args).returncode == 0
    path = tmp_path / "run" / "records.jsonl"
    first, _ = read_records(path)
    path.write_text(json.dumps(first) + "\n")  # as if killed after the first measurement

    resumed = bench_cli(tmp_path, *args)
    assert resumed.returncode == 0, resumed.stderr
    records = read_records(path)
    assert records[0] == first and statuses(records) == [(16, "infer", "ok"), (32, "infer", "ok")]
    again = bench_cli(tmp_path, *args)
    assert "already finished for this config" in again.stdout and read_records(path) == records


def test_two_towers_are_measured_with_both_documents(tmp_path: Path):
    result = bench_cli(tmp_path, "task=retrieval", "model=linear", "bench.seq_lens=[16]", "bench.modes=[infer]")
    assert result.returncode == 0, result.stderr
    [record] = read_records(tmp_path / "run" / "records.jsonl")
    metrics = record["metrics"]
    assert record["status"] == "ok" and metrics["tokens_per_s"] == pytest.approx(metrics["steps_per_s"] * 2 * 2 * 16)


def test_flops_of_full_attention_are_the_products_of_the_model():
    cfg = bench_config("model=full", "model.num_layers=2", "bench.batch_size=3")
    batch, length, dim, mlp, heads = 3, 40, 32, 64, 2
    per_layer = 2 * batch * length * (3 * dim * dim + dim * dim + 2 * dim * mlp) + 4 * batch * length * length * dim
    head = 2 * batch * (dim * mlp + mlp * 2)
    assert heads == cfg.model.num_heads
    assert step_flop_count(cfg, length, BenchMode.infer).flops == 2 * per_layer + head
    assert step_flop_count(cfg, length, BenchMode.train).flops == 3 * (2 * per_layer + head)
    plain = bench_config("model=full_math", "model.num_layers=2", "bench.batch_size=3")
    assert step_flop_count(plain, length, BenchMode.train).flops == 3 * (2 * per_layer + head)


def test_plain_full_attention_memory_grows_with_the_square_and_linear_variants_do_not():
    """The bench's model and batch on the cpu profile: tracked peak bytes of a train step, 512 to 1K tokens
    (at 512 the scores already outweigh the rest: full attention grows 3.7-fold, the others 2-fold)."""

    def growth(*overrides: str) -> float:
        cfg = compose_config(*overrides, "bench.min_run_time=0.001", config="bench")
        peak = [measured(cfg, n, BenchMode.train, CPU)["peak_memory_mb"] for n in (512, 1024)]
        return peak[1] / peak[0]

    assert 3.5 <= growth("model=full_math") <= 4.5
    for name in ("linformer", "linear"):
        assert growth(f"model={name}") <= 2.3


def test_a_memory_cap_makes_longer_lengths_oom_then_skipped_and_the_other_modes_go_on(tmp_path: Path):
    result = bench_cli(tmp_path, "model=full_math", "bench.seq_lens=[32,64,512,1024]", "hardware.cpu_memory_cap_mb=2")
    assert result.returncode == 0, result.stderr  # out of memory is a result, not an error
    records = read_records(tmp_path / "run" / "records.jsonl")
    assert statuses(records) == [
        (32, "train", "ok"), (32, "infer", "ok"), (64, "train", "ok"), (64, "infer", "ok"),
        (512, "train", "oom"), (512, "infer", "oom"), (1024, "train", "skipped"), (1024, "infer", "skipped"),
    ]
    assert "exceed the cap of 2.0 MB" in records[4]["error"]
    assert records[6]["error"] == "skipped: out of memory at 512 tokens"


def test_a_capped_sweep_records_oom_for_full_attention_and_finishes_the_others(tmp_path: Path):
    result = run_main("runners.bench", "-m", *SMALL, "model=full_math,linformer", "bench.seq_lens=[64,512]",
                      "bench.modes=[train]", "hardware.cpu_memory_cap_mb=5", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 0, result.stderr
    by_model = {p.parent.name.split("_")[0]: statuses(read_records(p))
                for p in (tmp_path / "sweep").rglob("records.jsonl")}
    assert by_model == {"full-math": [(64, "train", "ok"), (512, "train", "oom")],
                        "linformer": [(64, "train", "ok"), (512, "train", "ok")]}


def test_find_max_batch_finds_the_largest_batch_under_the_cap():
    cfg = bench_config("model=full_math", "hardware.cpu_memory_cap_mb=3", "bench.find_max_batch=true",
                       "bench.modes=[infer]")
    outcome = measure(cfg, 128, BenchMode.infer)
    largest = outcome.metrics["max_batch"]
    assert outcome.status == "ok" and largest >= 2
    cap = 3 * 2**20
    step = make_step(cfg, build_model(cfg, 128, CPU), BenchMode.infer, CPU)
    assert fits(step, inputs(cfg, 128, largest, CPU), CPU, cap)
    assert not fits(step, inputs(cfg, 128, largest + 1, CPU), CPU, cap)


@pytest.mark.parametrize("largest", [0, 1, 2, 3, 7, 8, 33, 100, 1000])
@pytest.mark.parametrize("start", [1, 2, 32])
def test_largest_batch_search_is_exact_and_logarithmic(largest, start):
    calls = []

    def fits_upto(size: int) -> bool:
        calls.append(size)
        return size <= largest

    assert largest_batch(fits_upto, start, limit=100) == min(largest, 100)
    assert len(calls) <= 2 * 8 + 2 and all(1 <= size <= 100 for size in calls)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("bench.modes=[trian]", "bench.modes[0]: Invalid value 'trian', expected one of [train, infer]"),
        ("bench.seq_lens=[]", "bench.seq_lens: need one or more lengths of at least 1 token, got []"),
        ("bench.find_max_batch=true", "bench.find_max_batch: on the CPU it needs hardware.cpu_memory_cap_mb"),
        ("bench.batch_size=0", "bench.batch_size=0: must be at least 1"),
        ("hardware.cpu_memory_cap_mb=-1", "hardware.cpu_memory_cap_mb=-1.0: must be greater than 0, or null"),
        ("trainer.accumulate=0", "trainer.accumulate=0: must be at least 1"),
        ("trainer.accumulate=3", "trainer.accumulate=3: must divide bench.batch_size=2 into equal micro-batches"),
    ],
)
def test_bad_settings_are_one_line_and_leave_no_records(tmp_path: Path, override, message):
    result = bench_cli(tmp_path, override)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"lra-bench: error: {message}")
    assert not (tmp_path / "run" / "records.jsonl").exists()


def test_a_bad_setting_is_one_line_from_a_process_of_its_own(tmp_path: Path):
    """As a user sees it: exit status 2, the one line and nothing else, no records."""
    result = run_cli("runners.bench", *SMALL, "bench.seq_lens=[]", f"hydra.run.dir={tmp_path / 'run'}", cwd=REPO)
    assert result.returncode == 2
    assert result.stderr == "lra-bench: error: bench.seq_lens: need one or more lengths of at least 1 token, got []\n"
    assert not (tmp_path / "run" / "records.jsonl").exists()


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def fail() -> None:
    raise ValueError("no good")


def test_a_worker_killed_or_failing_is_reported_not_fatal():
    with pytest.raises(WorkerDied, match="killed by SIGKILL") as died:
        run_isolated(die)
    assert died.value.killed
    with pytest.raises(WorkerError, match="ValueError: no good"):
        run_isolated(fail)
    assert run_isolated(divmod, 7, 2) == (3, 1)
