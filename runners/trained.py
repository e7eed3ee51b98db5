"""A finished lra-train run read back: its record, its config and the model of its best checkpoint.

What distillation (a teacher) and lra-compress (the model to compress) start from. The config is
the one the run's record carries, so the model is rebuilt exactly as it was trained.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lra import checkpoint
from lra.config import EncoderConfig
from lra.errors import LRAError
from lra.records import RECORDS_FILE, read_records
from models.attention import ATTENTION
from models.encoder import Classifier
from tasks import TASKS, task_config

# Keys records of schema 1 lack, at the values that reproduce what those runs computed.
SCHEMA_1_DEFAULTS = {"model": {"encoder": asdict(EncoderConfig())}, "trainer": {"accumulate": 1}}


def trained_record(run_dir: Path, key: str) -> dict[str, Any]:
    """The record of the finished lra-train run in `run_dir`; LRAError naming `key` (the config
    key that pointed there) when it is not one."""
    path = Path(run_dir) / RECORDS_FILE
    if not path.is_file():
        raise LRAError(f"{key}: {run_dir} is not an lra-train run directory (no {RECORDS_FILE})")
    records = read_records(path)
    if len(records) != 1 or records[0].get("kind") != "train":
        raise LRAError(f"{key}: {path} holds no lra-train record")
    if records[0]["status"] != "ok":
        raise LRAError(f"{key}: {path}: the run did not finish (status {records[0]['status']})")
    return records[0]


def trained_config(record: dict[str, Any]) -> DictConfig:
    """The config of a finished lra-train run, from its record (see `trained_record`)."""
    cfg = OmegaConf.merge(SCHEMA_1_DEFAULTS, record["config"])
    # The task and the attention typed again by their dataclasses, as the models and loaders expect.
    cfg.task = OmegaConf.merge(OmegaConf.structured(TASKS.get(cfg.task.name)[1]), cfg.task)
    cfg.model.attention = OmegaConf.merge(
        OmegaConf.structured(ATTENTION.get(cfg.model.attention.name)[1]), cfg.model.attention
    )
    return cfg


def trained_model(run_dir: Path, cfg: DictConfig, key: str) -> Classifier:
    """The model of the run's best checkpoint (on the CPU, in eval mode)."""
    task = task_config(cfg.task)
    model = Classifier(cfg.model, task.vocab_size, task.num_classes, task.max_len, task.towers)
    path = Path(run_dir) / checkpoint.DIRECTORY / checkpoint.BEST
    saved = checkpoint.load(path)
    if saved is None:
        raise LRAError(f"{key}: {path}: no best checkpoint")
    model.load_state_dict(saved["model"])
    return model.eval()
