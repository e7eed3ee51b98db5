"""Run records: the contract between the runners and the report (../DESIGN.md, "Run records").

Every job writes `records.jsonl` in its output directory, atomically, one JSON object per line.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lra.config import CONF_DIR
from lra.errors import LRAError
from lra.files import atomic_write

# 2: techniques, precision and compression (schema 1 records read as none, fp32, none).
# 3: trainer.batch_size is a step's whole batch, split into trainer.accumulate micro-batches (in 2 it
#    was the micro-batch); test metrics over the whole test split, with test_examples and test_degenerate.
SCHEMA = 3
RECORDS_FILE = "records.jsonl"
STATUSES = ("ok", "oom", "diverged", "failed", "skipped")
# Keys that change how a run is shown, not what it computes; left out of the config hash.
NOT_HASHED = ("trainer.progress", "trainer.log_every", "hardware.num_workers", "hardware.bench_batch_size",
              "bench.progress", "force")


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain JSON-ready data, interpolations resolved, enums as strings."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def config_hash(cfg: DictConfig) -> str:
    """A short hash of everything in the config that changes what a run computes."""
    data = resolved(cfg)
    for key in NOT_HASHED:
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


@functools.cache  # once per process: a bench job writes a record per measurement
def git_sha() -> str | None:
    """The checkout's commit, when lra-bench runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=CONF_DIR.parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else None
    else:
        name = platform.processor() or platform.machine()
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "device_name": name,
        "threads": torch.get_num_threads(),
        "git_sha": git_sha(),
    }


def techniques(cfg: DictConfig) -> list[str]:
    """The model-level techniques `cfg` applies besides its attention, as the report names them
    (its rows read `<model> + <technique> + ...`); precision is a field of its own."""
    encoder = cfg.model.encoder
    names = []
    if encoder.share_layers:
        names.append("shared layers")
    if encoder.embed_dim is not None:
        names.append(f"embed {encoder.embed_dim}")
    if encoder.reversible:
        names.append("reversible")
    if cfg.trainer.accumulate > 1:
        names.append(f"accumulate {cfg.trainer.accumulate}")
    if "distill" in cfg and cfg.distill.teacher is not None:
        names.append("distilled")
    return names


def make_record(
    cfg: DictConfig,
    *,
    kind: str,
    status: str,
    metrics: dict[str, Any],
    seq_len: int,
    batch_size: int,
    device: torch.device,
    wall_s: float,
    error: str | None = None,
    compression: str | None = None,
) -> dict[str, Any]:
    """One measurement in the DESIGN.md schema; `compression`: what lra-compress did to the trained
    model measured (e.g. "int8", "pruned 50%"), None for the model as trained."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    return {
        "schema": SCHEMA,
        "kind": kind,
        "model": cfg.model.name,
        "techniques": techniques(cfg),
        "precision": str(cfg.hardware.precision),
        "compression": compression,
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
        "env": environment(device),
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
