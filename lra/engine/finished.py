"""A finished lra-train run read back: its record, its config and its tested model (that of its best
checkpoint, or its final weights: trainer.test_checkpoint), the model its test accuracy is of.

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
from lra.config import TestCheckpoint
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
    """The model the run tested (on the CPU, in eval mode): its best checkpoint's, or under
    `trainer.test_checkpoint: last` its last checkpoint's, the final weights.

    Built under a forked RNG: its random init, overwritten by the checkpoint, draws nothing from
    the global one, so a distilled student starts from the weights of its baseline of the same seed.
    Either checkpoint is read without a fallback (lra.checkpoint): an older generation is not the
    model the record reports on, so an unreadable one is an LRAError naming it.
    """
    task = task_config(cfg.task)
    with torch.random.fork_rng(devices=[]):  # built on the CPU: only the CPU generator draws
        model = Classifier(cfg.model, task.vocab_size, task.num_classes, task.max_len, task.towers)
    which = TestCheckpoint(cfg.trainer.test_checkpoint)
    path = Path(run_dir) / checkpoint.DIRECTORY / (checkpoint.BEST if which is TestCheckpoint.best else checkpoint.LAST)
    try:
        saved = checkpoint.load(path, fallback=False)
    except LRAError as error:
        raise LRAError(f"{key}: {error}") from None
    if saved is None:
        raise LRAError(f"{key}: {path}: no {which.value} checkpoint")
    model.load_state_dict(saved["model"])
    return model.eval()
