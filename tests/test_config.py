"""Composition of the real configs, and one-line errors for bad command lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lra.config import CONF_DIR
from models.attention import list_attention
from tasks import TASKS
from tests.conftest import REPO, compose_config, run_cli, run_main


def test_default_is_full_attention_on_listops_with_the_small_cpu_profile():
    cfg = compose_config()
    assert (cfg.model.name, cfg.task.name, cfg.hardware.name) == ("full-sdpa", "listops", "cpu")
    assert cfg.hardware.precision.name == "fp32"
    assert cfg.model.dim == 64 and cfg.model.num_layers == 2
    assert cfg.task.max_len == 128 and cfg.task.dir == "listops-gen-128"  # conf/scale/cpu_listops.yaml
    assert (cfg.task.generate.min_len, cfg.task.generate.max_len) == (16, 128)  # they follow max_len


@pytest.mark.parametrize("hardware", ["gpu", "h200"])
def test_gpu_profiles_carry_the_lra_paper_settings(hardware):
    cfg = compose_config(f"hardware={hardware}")
    # lra_benchmarks/listops/configs/base_listops_config.py
    assert (cfg.model.num_layers, cfg.model.dim, cfg.model.num_heads, cfg.model.mlp_dim) == (4, 512, 8, 1024)
    assert (cfg.trainer.batch_size, cfg.trainer.max_steps, cfg.optimizer.warmup_steps) == (32, 5000, 1000)
    assert cfg.optimizer.lr == 0.05 and cfg.optimizer.schedule.name == "rsqrt"
    assert cfg.task.max_len == 2000 and cfg.task.dir == "listops-1000"
    assert cfg.hardware.device.name == "cuda" and cfg.hardware.precision.name == "bf16"
    assert cfg.hardware.compile is (hardware == "h200")


def test_math_impl_changes_the_row_name():
    assert compose_config("model.attention.impl=math").model.name == "full-math"


def test_performer_row_name_carries_kernel_and_features():
    assert compose_config("model=performer").model.name == "performer-softmax-random"
    relu = compose_config("model=performer", "model.attention.kernel=relu", "model.attention.features=deterministic")
    assert relu.model.name == "performer-relu-deterministic"


def test_every_group_option_has_a_registered_schema_and_composes():
    for yaml in sorted((CONF_DIR / "model").glob("*.yaml")):
        cfg = compose_config(f"model={yaml.stem}")
        assert cfg.model.attention.name in list_attention()
    for yaml in sorted((CONF_DIR / "task").glob("*.yaml")):
        cfg = compose_config(f"task={yaml.stem}")
        assert cfg.task.name in TASKS.names()
        OmegaConf.to_container(cfg, resolve=True)  # no missing value


MODEL_OPTIONS = [yaml.stem for yaml in (CONF_DIR / "model").glob("*.yaml")]


BAD_COMMAND_LINES = [
    ("model=nope", "model=nope: no such model; choose one of: " + ", ".join(sorted(MODEL_OPTIONS))),
    ("hardware=tpu", "choose one of: cpu, gpu, h200"),
    ("model.num_heads=x", "model.num_heads: Value 'x' of type 'str' could not be converted to Integer"),
    ("model.attention.impl=fast", "model.attention.impl: Invalid value 'fast', expected one of [sdpa, math]"),
    ("model.attention.windw=3", "model.attention.windw: Key 'windw' not in 'FullAttentionConfig'; known keys"),
    ("trainer.max_steps=1.5", "trainer.max_steps"),
    ("model=lsh model.attention.bucket_size=0", "model.attention.bucket_size=0: must be at least 1"),
    ("model=performer model.attention.features=deterministic",
     "model.attention.features: deterministic needs kernel relu"),
]


@pytest.mark.parametrize("override, expected", BAD_COMMAND_LINES)
def test_bad_command_lines_fail_with_one_line(override, expected, tmp_path: Path):
    """lra-train's own entry point, run in this process: exit status 2 and one line, nothing written."""
    result = run_main("runners.train", *override.split(), f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lra-train: error: ") and expected in lines[0]
    assert not (tmp_path / "run" / "records.jsonl").exists()


def test_a_bad_command_line_fails_with_one_line_from_a_process_of_its_own(tmp_path: Path):
    """The same as a user sees it: nothing else printed (no warning, no traceback) and exit status 2."""
    override, expected = BAD_COMMAND_LINES[0]
    result = run_cli("runners.train", override, f"hydra.run.dir={tmp_path / 'run'}", cwd=REPO)
    assert result.returncode == 2
    assert result.stderr == f"lra-train: error: {expected}\n" and result.stdout == ""
    assert not (tmp_path / "run").exists()
