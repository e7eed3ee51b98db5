"""Shared fixtures: the real Hydra configs, composed and shrunk for tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import models.attention  # noqa: F401  (registers every attention schema)
import tasks  # noqa: F401  (registers every task schema)
from lra.config import CONF_DIR

REPO = CONF_DIR.parent

# A ListOps run that takes seconds: the cpu profile, smaller still (conf/experiment/smoke.yaml).
TINY = ["experiment=smoke"]


def compose_config(*overrides: str, config: str = "train") -> DictConfig:
    """The real config `config` with `overrides`, as lra-train would compose it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config, overrides=list(overrides))


@pytest.fixture
def tiny_cfg(tmp_path: Path):
    """A composer of tiny ListOps runs whose data lives under this test's tmp dir."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(*TINY, f"data.root={tmp_path / 'data'}", *overrides)

    return make


def run_cli(module: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args` as a user would (no HYDRA_FULL_ERROR), with `env` added."""
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
