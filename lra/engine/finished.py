"""A finished lra-train run read back: its record, its config and the model of its best checkpoint.

What distillation (a teacher) and lra-compress (the model to compress) start from. The config is
the one the run's record carries (upgraded to the current schema, lra.records), so the model is
rebuilt exactly as it was trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lra import checkpoint
from lra.errors import LRAError
from lra.records import RECORDS_FILE, read_records, upgraded
from models.attention import ATTENTION
from models.encoder import Classifier
from tasks import TASKS, task_config


def trained_record(run_dir: Path, key: str) -> dict[str, Any]:
    """The record of the finished lra-train run in `run_dir`; LRAError naming
    `key` (the config key that pointed there) when it is not one."""
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
    """The config of a finished lra-train run, from its record (see `trained_record`), as the
    current schema states it."""
    cfg = OmegaConf.create(upgraded(record)["config"])
    # The task and the attention typed again by their dataclasses, as the models and loaders expect.
    cfg.task = OmegaConf.merge(OmegaConf.structured(TASKS.get(cfg.task.name)[1]), cfg.task)
    cfg.model.attention = OmegaConf.merge(
        OmegaConf.structured(ATTENTION.get(cfg.model.attention.name)[1]), cfg.model.attention
    )
    return cfg


def trained_model(run_dir: Path, cfg: DictConfig, key: str) -> Classifier:
    """The model of the run's best checkpoint (on the CPU, in eval mode).

    Built under a forked RNG: its random init, overwritten by the checkpoint, draws nothing from
    the global one, so a distilled student starts from the weights of its baseline of the same seed.
    The best checkpoint has no fallback (lra.checkpoint): unreadable, it is an LRAError naming it.
    """
    task = task_config(cfg.task)
    with torch.random.fork_rng(devices=[]):  # built on the CPU: only the CPU generator draws
        model = Classifier(cfg.model, task.vocab_size, task.num_classes, task.max_len, task.towers)
    path = Path(run_dir) / checkpoint.DIRECTORY / checkpoint.BEST
    try:
        saved = checkpoint.load(path, fallback=False)
    except LRAError as error:
        raise LRAError(f"{key}: {error}") from None
    if saved is None:
        raise LRAError(f"{key}: {path}: no best checkpoint")
    model.load_state_dict(saved["model"])
    return model.eval()
