"""Run records: the contract between the runners and the report (../DESIGN.md, "Run records").

Every job writes `records.jsonl` in its output directory, atomically, one JSON object per line.
Reading and writing them needs no torch: the report runs where torch is not installed.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lra.config import EncoderConfig, Precision, ProtocolConfig, technique_fields, unhashed_keys
from lra.errors import LRAError
from lra.files import atomic_write

# 2: techniques, precision and compression (schema 1 records read as none, fp32, none).
# 3: trainer.batch_size is a step's whole batch, split into trainer.accumulate micro-batches (in 2 it
#    was the micro-batch); test metrics over the whole test split, with test_examples and test_degenerate.
# 4: train records carry metrics.history (a Validation per validation) and <split>_loss.
# 5: protocol (clean or lra, conf/protocol/) and its knobs (records of 4 and before: clean, the knobs'
#    defaults, and text validated on its test split); hardware.matmul_precision; bench.padding.
SCHEMA = 5
RECORDS_FILE = "records.jsonl"
STATUSES = ("ok", "oom", "diverged", "failed", "skipped")
# What older records lacked, at the values that reproduce what those runs computed. Schema 1: no technique,
# fp32, not compressed; the default encoder, no accumulation. Schema 4: protocol clean, with its knobs
# at the values every run had before they were knobs, torch's default fp32 matmul precision; and, in the
# records of one task or kind (OLDER_CONFIG_OF), text validated on its test split, bench inputs unpadded.
OLDER_FIELDS = {"techniques": (), "precision": Precision.fp32.value, "compression": None, "protocol": "clean"}
OLDER_CONFIG = {
    "model": {"encoder": asdict(EncoderConfig()), "qkv_dim": None, "init": "torch", "attention_bias": True,
              "norm_eps": 1e-5, "padding_mask": "real", "pool_padding": False, "dual_head": "nli"},
    "optimizer": {"decay": "matrices"},
    "trainer": {"accumulate": 1, "test_checkpoint": "best"},
    "hardware": {"matmul_precision": "highest"},
    "protocol": asdict(ProtocolConfig()),
}
OLDER_CONFIG_OF = {("task", "text"): {"task": {"val_fraction": None, "split_seed": 0}},
                   ("kind", "bench"): {"bench": {"padding": "none"}}}


@dataclass
class Validation:
    """One entry of a train record's metrics.history: a periodic validation, a point of the learning curve."""

    step: int               # optimizer steps taken
    train_seconds: float    # wall-clock seconds of training so far (validations and checkpoints not counted)
    examples: int           # training examples seen: step x trainer.batch_size
    val_accuracy: float     # on the validation examples (trainer.eval_batches batches of them, or all)
    val_loss: float         # mean cross-entropy on the same examples


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain JSON-ready data, interpolations resolved, enums as strings."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def config_hash(cfg: DictConfig) -> str:
    """A short hash of everything in the config that changes what a run computes."""
    data = resolved(cfg)
    for key in unhashed_keys():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def job_config_hash(*, _root_: DictConfig) -> str:
    """`config_hash` of the job Hydra is composing (its config is the root without `hydra`).

    As `${lra.config_hash:}` it names a sweep's job directories: two jobs share a directory only
    when they compute the same thing, so sweeps never collide and a rerun finds its own jobs.
    """
    return config_hash(OmegaConf.masked_copy(_root_, [key for key in _root_ if key != "hydra"]))


OmegaConf.register_new_resolver("lra.config_hash", job_config_hash, replace=True)


def techniques(cfg: DictConfig) -> list[str]:
    """The model-level techniques `cfg` applies besides its attention, as the report names them
    (its rows read `<model> + <technique> + ...`): every config field the schema marks as a
    technique (lra.config) whose value is not its default. Precision is a field of its own."""
    return [technique.name(value) for technique in technique_fields()
            if (value := OmegaConf.select(cfg, technique.key)) != technique.default]


def make_record(
    cfg: DictConfig,
    *,
    kind: str,
    status: str,
    metrics: dict[str, Any],
    seq_len: int,
    batch_size: int,
    env: dict[str, Any],
    wall_s: float,
    error: str | None = None,
    compression: str | None = None,
) -> dict[str, Any]:
    """One measurement in the DESIGN.md schema; `compression`: what lra-compress did to the trained
    model measured (e.g. "int8", "pruned 50%"), None for the model as trained; `env`: the machine's
    (lra.engine.device.environment)."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    return {
        "schema": SCHEMA,
        "kind": kind,
        "model": cfg.model.name,
        "techniques": techniques(cfg),
        "precision": str(cfg.hardware.precision),
        "compression": compression,
        "protocol": cfg.protocol.name,
        "task": cfg.task.name,
        "hardware": cfg.hardware.name,
        "seed": cfg.seed,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "status": status,
        "error": error,
        "metrics": metrics,
        "config": resolved(cfg),
        "config_hash": config_hash(cfg),
        "env": env,
        "wall_s": round(wall_s, 3),
    }


def write_records(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    """Write (replace) the job's records.jsonl atomically."""
    path = run_dir / RECORDS_FILE
    atomic_write(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in records))
    return path


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of one records.jsonl file; LRAError names the line that is not JSON."""
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise LRAError(f"{path}:{lineno}: not a JSON record ({error.msg})") from error
    return records


def upgraded(record: dict[str, Any]) -> dict[str, Any]:
    """`record` as the current schema states it: what older records lacked at the values those runs
    computed with (OLDER_FIELDS, OLDER_CONFIG, OLDER_CONFIG_OF), and before schema 3, a step's whole
    batch as trainer.batch_size and a train record's batch_size (they held the micro-batch).
    A record of the current schema is returned as it is; `record` itself is never changed."""
    schema = record.get("schema", 1)
    if schema >= SCHEMA or not isinstance(record.get("config"), dict):
        return {**OLDER_FIELDS, **record}
    config = _filled(record["config"], OLDER_CONFIG)
    for (key, value), defaults in OLDER_CONFIG_OF.items():
        if record.get(key) == value:
            config = _filled(config, defaults)
    record = {**OLDER_FIELDS, **record, "config": config}
    trainer = config["trainer"]
    if schema < 3 and isinstance(trainer.get("batch_size"), int):
        trainer["batch_size"] *= trainer["accumulate"]
        if record.get("kind") == "train":
            record["batch_size"] = trainer["batch_size"]
    return record


def _filled(config: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A copy of `config` (copied along the paths of `defaults`) with a copy of every key of `defaults` it lacks."""
    filled = dict(config)
    for key, default in defaults.items():
        if isinstance(default, dict) and isinstance(filled.get(key), dict):
            filled[key] = _filled(filled[key], default)
        else:
            filled.setdefault(key, copy.deepcopy(default))
    return filled
