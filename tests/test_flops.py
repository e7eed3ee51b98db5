"""FLOPs of every attention variant: counted without computing where the model allows it (meta device,
then fake tensors), else for real, and always the count a real step on the CPU gives; achieved TFLOP/s
in the bench records of variants the meta device cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lra.config import CONF_DIR, BenchMode
from lra.engine.benchmark import COUNTED_STEPS, bench_inputs, step_flop_count
from lra.engine.inputs import build_model
from lra.errors import LRAError
from lra.measure import FLOP_COUNTERS, count_flops, count_step_flops
from lra.records import read_records
from tests.conftest import compose_config, run_main

VARIANTS = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))
SMALL = ["model.num_layers=1", "model.dim=32", "model.num_heads=2", "model.mlp_dim=64", "bench.min_run_time=0.01",
         "bench.progress=false"]
CPU = torch.device("cpu")


def bench_config(*overrides: str):
    return compose_config(*SMALL, *overrides, config="bench")


def real_count(cfg, length: int, mode: BenchMode) -> int:
    """The FLOPs of one step run for real on the CPU, on the bench's batch."""
    model = build_model(cfg, length, CPU)
    batch = bench_inputs(cfg, length, cfg.bench.batch_size, CPU)
    return count_flops(lambda: COUNTED_STEPS[mode](model, batch))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_is_counted_at_each_length_as_a_real_step_counts_it(variant: str):
    """On the text task's padded batch (a mask, as training has): positive, growing with the length,
    and equal to the count of the same step run for real."""
    cfg = bench_config(f"model={variant}")
    counts = {length: step_flop_count(cfg, length, BenchMode.train) for length in (128, 256)}
    assert all(count is not None and count.flops > 0 for count in counts.values())
    assert counts[256].flops > counts[128].flops
    assert counts[128].on in FLOP_COUNTERS
    assert counts[128].flops == real_count(cfg, 128, BenchMode.train)


def test_no_variant_computes_to_be_counted():
    """Every variant is counted on the meta device or on fake tensors (those that turn autocast off for
    their device, which the meta device has none of), never by a real step."""
    for variant in VARIANTS:
        count = step_flop_count(bench_config(f"model={variant}"), 128, BenchMode.infer)
        assert count is not None and count.on in ("meta", "fake"), variant
    assert step_flop_count(bench_config("model=full"), 128, BenchMode.infer).on == "meta"


@pytest.mark.parametrize("variant", ["full", "full_math"])
@pytest.mark.parametrize("length", [128, 512])
def test_full_attention_is_the_analytic_count_on_a_padded_batch(variant: str, length: int):
    """4·B·H·n²·d for QK^T and PV (H·d = dim) plus the projections, FFN and head, at two lengths, on the
    text task's padded batch; the backward pass twice the forward's products."""
    cfg = bench_config(f"model={variant}", "model.num_layers=2", "bench.batch_size=3")
    batch, dim, mlp, heads, layers, classes = 3, 32, 64, 2, 2, 2
    assert heads == cfg.model.num_heads and bench_inputs(cfg, length, batch, CPU)[1] is not None
    attention = 4 * batch * heads * length**2 * (dim // heads)
    projections = 2 * batch * length * (4 * dim * dim + 2 * dim * mlp)  # q, k, v, out; the FFN's two layers
    head = 2 * batch * (dim * mlp + mlp * classes)
    forward = step_flop_count(cfg, length, BenchMode.infer).flops
    assert forward == pytest.approx(layers * (attention + projections) + head, rel=1e-6)
    assert step_flop_count(cfg, length, BenchMode.train).flops == 3 * forward


def test_a_model_no_counter_can_run_is_counted_for_real_and_none_gives_an_error():
    class ReadsValues(torch.nn.Module):
        """An output shape that depends on values: neither the meta device nor fake tensors follow it."""

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[x[:, 0] > 0] @ self.weight

    def build():
        return ReadsValues(), (torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [2.0, 0, 0, 0]]),)

    count = count_step_flops(build, lambda model, batch: model(*batch))
    assert (count.flops, count.on) == (2 * 2 * 4 * 4, "cpu")  # two rows pass the test

    def broken(model: torch.nn.Module, batch: tuple) -> None:
        raise RuntimeError("no good")

    with pytest.raises(LRAError, match=r"^no FLOP count: meta: RuntimeError: no good; fake: .*; cpu: .*no good$"):
        count_step_flops(build, broken)


def test_bench_records_of_variants_the_meta_device_cannot_run_carry_tflops(tmp_path: Path):
    variants = "linear,performer,nystrom,sinkhorn,lsh,routing"
    result = run_main("runners.bench", "-m", *SMALL, f"model={variants}", "bench.seq_lens=[64]", "bench.modes=[infer]",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 0, result.stderr
    records = [record for path in (tmp_path / "sweep").rglob("records.jsonl") for record in read_records(path)]
    assert len(records) == len(variants.split(","))
    for record in records:
        metrics = record["metrics"]
        assert record["status"] == "ok" and metrics["flops_counted_on"] in ("meta", "fake"), record["model"]
        assert metrics["tflops"] == pytest.approx(metrics["flops_per_step"] * metrics["steps_per_s"] / 1e12)
        assert metrics["tflops"] > 0
