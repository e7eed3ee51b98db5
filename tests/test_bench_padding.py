"""The bench measures what training runs: batches of a task whose sequences vary in length are padded
(so attention gets a mask, as in training), fixed-length tasks are not, and every record names the
kernel scaled_dot_product_attention ran."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.core.config_store import ConfigStore
from torch.nn.attention import SDPBackend, sdpa_kernel

from lra.config import BenchMode
from lra.engine.benchmark import SDPA_FIELDS, bench_inputs, measured, real_lengths
from lra.measure import SdpaCall, SdpaCalls
from lra.records import read_records
from lra.report import Group, efficiency_tables, load_records, summarise
from tasks import task_config
from tests.conftest import compose_config, run_main
from tests.report_fixtures import bench, write

SMALL = ["model.num_layers=1", "model.dim=32", "model.num_heads=2", "model.mlp_dim=64", "bench.min_run_time=0.01",
         "bench.progress=false"]
CPU = torch.device("cpu")
PADDED = ("listops", "text", "retrieval")
FIXED = ("image", "pathfinder", "pathx", "recall")


def bench_config(*overrides: str):
    return compose_config(*SMALL, *overrides, config="bench")


def test_the_tasks_whose_sequences_vary_in_length_are_the_padded_ones():
    """From each task's config class (TaskConfig.min_fill), every registered task."""
    tasks = {name for name in ConfigStore.instance().repo["schema"]["task"]}
    assert {f"{name}.yaml" for name in (*PADDED, *FIXED)} == tasks
    for name in (*PADDED, *FIXED):
        fill = task_config(bench_config(f"task={name}").task).min_fill
        assert (fill is not None) == (name in PADDED), name


@pytest.mark.parametrize("task", PADDED)
def test_a_padded_task_draws_real_lengths_from_its_share_to_the_length(task: str):
    cfg = bench_config(f"task={task}", "bench.batch_size=64")
    tokens, mask, _ = bench_inputs(cfg, 200, 64, CPU)
    real = mask.sum(-1)
    shortest = max(1, math.ceil(task_config(cfg.task).min_fill * 200))
    assert real.max() == 200 and real.min() >= shortest and real.float().std() > 10
    assert torch.equal(mask, torch.arange(200) < real[..., None])  # real tokens first, then padding
    assert not tokens[~mask].any()  # padding is token 0, as tasks.batching.pad_batch pads
    assert torch.equal(real_lengths(cfg, tuple(real.shape), 200), real)  # the run's seed alone draws them
    assert not torch.equal(real_lengths(bench_config(f"task={task}", "seed=1"), tuple(real.shape), 200), real)


def test_no_padding_on_a_fixed_length_task_with_padding_none_or_for_a_batch_of_one():
    assert bench_inputs(bench_config("task=image"), 64, 4, CPU)[1] is None
    assert bench_inputs(bench_config("task=text", "bench.padding=none"), 64, 4, CPU)[1] is None
    assert bench_inputs(bench_config("task=text"), 64, 1, CPU)[1] is None  # its one sequence is the longest


def test_sdpa_calls_name_the_kernel_torch_dispatched_to():
    """On the CPU: the flash kernel with and without a mask, the math form when only it is allowed; as
    torch's own choice (_fused_sdp_choice) says, the CPU's flash kernel pads nothing."""
    q = torch.randn(2, 2, 33, 8)
    mask = torch.ones(2, 1, 1, 33, dtype=torch.bool)
    mask[1, ..., 20:] = False
    with SdpaCalls() as sdpa:
        F.scaled_dot_product_attention(q, q, q)
        F.scaled_dot_product_attention(q, q[:, :, :21], q[:, :, :21], attn_mask=mask[..., :21])
        with sdpa_kernel(SDPBackend.MATH):
            F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
        q @ q.transpose(-1, -2)  # not attention: not recorded
    assert sdpa.calls == [SdpaCall("flash", 33, False, False), SdpaCall("flash", 21, True, False),
                          SdpaCall("math", 33, True, False)]
    assert SDPBackend(torch._fused_sdp_choice(q, q, q, mask, 0.0, False)) == SDPBackend.FLASH_ATTENTION


@pytest.mark.parametrize("mode", list(BenchMode))
def test_measurements_of_a_padded_task_carry_the_mask_and_name_the_kernel(mode: BenchMode):
    full = measured(bench_config("task=listops", "model=full"), 96, mode, CPU)
    assert 0 < full["masked_fraction"] < 1
    assert (full["sdpa_backend"], full["sdpa_seq_len"], full["sdpa_mask"], full["sdpa_padded"]) == ("flash", 96, True,
                                                                                                    False)
    unpadded = measured(bench_config("task=image", "model=full"), 96, mode, CPU)
    assert unpadded["masked_fraction"] == 0 and unpadded["sdpa_mask"] is False and unpadded["sdpa_backend"] == "flash"
    for variant in ("full_math", "linear"):  # no call of scaled_dot_product_attention
        metrics = measured(bench_config("task=listops", f"model={variant}"), 96, mode, CPU)
        assert metrics["masked_fraction"] > 0 and all(metrics[key] is None for key in SDPA_FIELDS)


def test_bench_records_of_padded_and_unpadded_tasks(tmp_path: Path):
    """Through lra-bench: the fields are in every record, and the CLS token's length is the one sdpa gets."""
    common = (*SMALL, "model=full", "bench.seq_lens=[40]", "bench.modes=[infer]")
    for task, pooling in (("text", "cls"), ("image", "mean")):
        result = run_main("runners.bench", *common, f"task={task}", f"model.pooling={pooling}",
                          f"hydra.run.dir={tmp_path / task}")
        assert result.returncode == 0, result.stderr
    [text] = read_records(tmp_path / "text" / "records.jsonl")
    [image] = read_records(tmp_path / "image" / "records.jsonl")
    assert text["metrics"]["masked_fraction"] > 0 and text["metrics"]["sdpa_mask"] is True
    assert text["metrics"]["sdpa_seq_len"] == 41 and text["metrics"]["sdpa_backend"] == "flash"
    assert text["config"]["bench"]["padding"] == "task"
    assert image["metrics"]["masked_fraction"] == 0 and image["metrics"]["sdpa_mask"] is False
    assert all(key in record["metrics"] for record in (text, image) for key in SDPA_FIELDS)


def test_the_report_shows_the_kernel_and_padding_of_the_rows_that_called_sdpa(tmp_path: Path):
    kernel = {"sdpa_seq_len": 512, "sdpa_mask": True, "sdpa_padded": False}
    records = [bench("full-sdpa", 512, steps=20, memory=50, masked_fraction=0.25, sdpa_backend="flash", **kernel),
               bench("full-math", 512, steps=10, memory=100, masked_fraction=0.25, **dict.fromkeys(SDPA_FIELDS)),
               bench("linear", 512, steps=30, memory=20, masked_fraction=0.25, **dict.fromkeys(SDPA_FIELDS))]
    cells = summarise(load_records(write(tmp_path / "runs", *records))).efficiency
    *_, table = efficiency_tables(cells, Group("cpu", "text", "train", 32))
    assert "scaled_dot_product_attention" in table.title
    assert table.frame.to_dict() == {512: {"full-sdpa": "flash (25% padding)"}}
