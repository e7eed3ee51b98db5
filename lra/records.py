"""Run records: the contract between the runners and the report (../DESIGN.md, "Run records").

Every job writes `records.jsonl` in its output directory, atomically, one JSON object per line.
One schema (`Record`, its `Metrics`) states every field and its type: `make_record` writes it, and
`read_records`, which every reader goes through, checks each record against it, so that a record of
a newer schema, a foreign writer or a damaged file is an error naming its line, never a wrong row.
Reading and writing them needs no torch: the report runs where torch is not installed.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, fields
from functools import cache
from pathlib import Path
from types import UnionType
from typing import Any, Iterable, Literal, TypedDict, get_args, get_origin, get_type_hints, is_typeddict

from omegaconf import DictConfig, OmegaConf

from lra.config import BenchMode, EncoderConfig, Precision, ProtocolConfig, technique_fields, unhashed_keys
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
Kind = Literal["train", "bench", "compress"]  # the runner that wrote a record: lra-train, lra-bench, lra-compress
Status = Literal["ok", "oom", "diverged", "failed", "skipped"]
KINDS: tuple[str, ...] = get_args(Kind)
STATUSES: tuple[str, ...] = get_args(Status)
BENCH_MODES = tuple(mode.value for mode in BenchMode)
# What older records lacked (a record of the current schema carries them all), at the values that
# reproduce what those runs computed. Schema 1: no technique, fp32, not compressed; the default
# encoder, no accumulation. Schema 4: protocol clean, with its knobs
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


class Metrics(TypedDict, total=False):
    """A record's metrics: every name the runners write, with its type (a reader finds these names
    there, of this type, or not at all; `NEEDED_METRICS`: those a kind of record always carries). Other
    names are kept as written: train_loss_<term> for each term of an objective that names them."""

    # lra-train: the run, and the model it tested
    steps: int                  # optimizer steps taken
    processes: int              # of a distributed run
    micro_batch_size: int       # the examples of one forward pass: trainer.batch_size / accumulate / processes
    accumulate: int             # micro-batches per step
    history: list[Validation]   # every validation, in order: the learning curve (schema 4 on)
    train_loss: float | None    # mean of the last trainer.log_every losses; None before the first
    weights_mb: float           # the tested weights on disk (lra-compress: the measured model's)
    tested: str                 # which weights were tested: trainer.test_checkpoint
    last_val_accuracy: float | None  # the last validation's, of the final weights
    teacher: str                # distillation: the teacher's model, run directory and test accuracy
    teacher_run: str
    teacher_test_accuracy: float | None
    # lra.predictions over a whole split (val: lra-compress; val_accuracy: lra-train's best validation)
    test_accuracy: float
    test_examples: int
    test_majority_rate: float
    test_top_class_share: float
    test_degenerate: bool
    test_loss: float
    val_accuracy: float
    val_examples: int
    val_majority_rate: float
    val_top_class_share: float
    val_degenerate: bool
    val_loss: float
    # speed and memory (lra-train: of its training steps; lra-bench: of one measurement)
    steps_per_s: float
    tokens_per_s: float
    peak_memory_mb: float | None
    memory_measure: str | None  # what peak_memory_mb counts (lra.memory)
    # lra-bench
    mode: Literal[BENCH_MODES]
    masked_fraction: float
    max_batch: int
    peak_rss_mb: float
    matmul_tflops: float
    flops_per_step: float
    flops_counted_on: str
    tflops: float
    sdpa_backend: str | None
    sdpa_seq_len: int | None
    sdpa_mask: bool | None
    sdpa_padded: bool | None
    # lra-compress
    prediction_agreement: float
    infer_steps_per_s: float
    infer_tokens_per_s: float
    infer_peak_memory_mb: float | None
    sparsity: float
    finetune_steps: int


# The metrics each kind of record carries: in every record of the kind, and besides in every ok one.
# They are what the report's tables and a rerun's skip logic read of it.
NEEDED_METRICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "train": ((), ("steps", "test_accuracy", "val_accuracy")),
    "bench": (("mode",), ("steps_per_s", "tokens_per_s", "peak_memory_mb")),
    "compress": ((), ("test_accuracy", "infer_steps_per_s", "infer_tokens_per_s", "infer_peak_memory_mb",
                      "weights_mb")),
}


@dataclass
class Record:
    """One measurement, as DESIGN.md ("Run records") states it: `make_record` writes these fields and
    `read_records` checks each against its type here, so the writer and the readers share one schema."""

    schema: int
    kind: Kind
    model: str                  # the attention variant
    techniques: list[str]       # model-level techniques besides the attention (lra.config), schema 2 on
    precision: str              # hardware.precision, schema 2 on
    compression: str | None     # what lra-compress did to the model measured; None: as trained (schema 2 on)
    protocol: str               # protocol.name, schema 5 on
    task: str
    hardware: str
    seed: int
    seq_len: int
    batch_size: int
    status: Status
    error: str | None           # one line, when not ok
    metrics: Metrics
    config: dict[str, Any]      # the resolved config
    config_hash: str            # lra.records.config_hash of it: a rerun's records are its own
    env: dict[str, Any]         # the machine (lra.engine.device.environment)
    wall_s: float


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
    (lra.engine.device.environment). ValueError when it is not what `read_records` reads back."""
    record = asdict(Record(
        schema=SCHEMA, kind=kind, model=cfg.model.name, techniques=techniques(cfg),
        precision=str(cfg.hardware.precision), compression=compression, protocol=cfg.protocol.name,
        task=cfg.task.name, hardware=cfg.hardware.name, seed=cfg.seed, seq_len=seq_len, batch_size=batch_size,
        status=status, error=error, metrics=metrics, config=resolved(cfg), config_hash=config_hash(cfg), env=env,
        wall_s=round(wall_s, 3),
    ))
    wrong = record_problem(record)
    if wrong is not None:
        raise ValueError(f"a record the readers would refuse: {wrong}")
    return record


def write_records(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    """Write (replace) the job's records.jsonl atomically."""
    path = run_dir / RECORDS_FILE
    atomic_write(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in records))
    return path


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of one records.jsonl file, as written (`upgraded` states them in the current
    schema), each checked to be a run record this code reads (`record_problem`). Every reader of
    records reads them here: LRAError names the file, the line and what is wrong with the first
    that is not, so that no record is ever shown or skipped for what it does not say."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as error:
        raise LRAError(f"{path}: cannot read: {error.strerror or error}") from None
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise LRAError(f"{path}:{lineno}: not UTF-8 text") from None
        except json.JSONDecodeError as error:
            raise LRAError(f"{path}:{lineno}: not a JSON record ({error.msg})") from None
        except RecursionError:
            raise LRAError(f"{path}:{lineno}: not a JSON record (nested too deeply)") from None
        wrong = record_problem(record)
        if wrong is not None:
            raise LRAError(f"{path}:{lineno}: {wrong}")
        records.append(record)
    return records


def record_problem(record: Any) -> str | None:
    """What is wrong with `record` as a run record, on one line (`<field>: <problem>`), or None.

    Its schema is an integer from 1 to SCHEMA; then the record as the current schema states it
    (`upgraded`) holds every field of `Record`, each of its type, and the metrics its kind and
    status carry (NEEDED_METRICS). Fields and metrics no reader knows are let through.
    """
    if not isinstance(record, dict):
        return f"not a run record: expected a JSON object, got {_shown(record)}"
    if "schema" not in record:
        return _problem(record, Record, "")  # names every field missing
    schema = record["schema"]
    if not _is(schema, int):
        return f"schema: expected an integer, got {_shown(schema)}"
    if schema > SCHEMA:
        return f"written by a newer lra-bench (schema {schema}; this reads up to {SCHEMA})"
    if schema < 1:
        return f"schema: expected 1 to {SCHEMA}, got {schema}"
    current = upgraded(record)
    return _problem(current, Record, "") or _missing_metrics(current)


def _missing_metrics(record: dict[str, Any]) -> str | None:
    """The NEEDED_METRICS that `record` (of a known kind and status) lacks, as `record_problem` says it."""
    always, when_ok = NEEDED_METRICS[record["kind"]]
    ok = record["status"] == "ok"
    missing = [name for name in (*always, *(when_ok if ok else ())) if name not in record["metrics"]]
    if not missing:
        return None
    return f"metrics: missing {', '.join(missing)} (in every {'ok ' if ok else ''}{record['kind']} record)"


_SCALARS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}  # JSON's


def _problem(value: Any, expected: Any, where: str) -> str | None:
    """The first thing in `value` that is not of the type `expected` (a `Record` field's type), as
    `where.path[i]: expected ..., got ...`; None when it is."""
    if not _is(value, expected):
        return f"{where}: expected {_described(expected)}, got {_shown(value)}"
    if value is None or expected is Any or get_origin(expected) is Literal:
        return None
    if _optional(expected):
        return _problem(value, next(arg for arg in get_args(expected) if arg is not type(None)), where)
    if get_origin(expected) is list:
        [item] = get_args(expected)
        return _first(_problem(each, item, f"{where}[{i}]") for i, each in enumerate(value))
    if expected in _SCALARS or get_origin(expected) is dict:
        return None
    return _object_problem(value, expected, where)


def _object_problem(value: dict[str, Any], expected: type, where: str) -> str | None:
    """`_problem` of an object read as the dataclass or TypedDict `expected`: its required fields
    present, and each field it holds of its type; other fields are let through."""
    types, required = _fields(expected)
    missing = ", ".join(name for name in types if name in required and name not in value)
    if missing:
        return f"{where}: missing {missing}" if where else f"not a run record (missing: {missing})"
    return _first(_problem(value[name], kind, f"{where}.{name}" if where else name)
                  for name, kind in types.items() if name in value)


def _first(problems: Iterable[str | None]) -> str | None:
    return next((problem for problem in problems if problem is not None), None)


def _optional(expected: Any) -> bool:
    return get_origin(expected) is UnionType and type(None) in get_args(expected)


def _is(value: Any, expected: Any) -> bool:
    """Whether `value` (read from JSON) has the outer shape of the type `expected`: of Any, a scalar,
    `X | None`, a Literal, a list (a tuple in memory too) or an object (a dict, a TypedDict, a dataclass)."""
    origin = get_origin(expected)
    if expected is Any:
        return True
    if _optional(expected):
        return value is None or any(_is(value, arg) for arg in get_args(expected) if arg is not type(None))
    if origin is Literal:
        return isinstance(value, str) and value in get_args(expected)
    if origin is list:
        return isinstance(value, (list, tuple))
    if expected in _SCALARS:
        numbers = (int, float) if expected is float else expected
        return isinstance(value, numbers) and (expected is bool or not isinstance(value, bool))
    return isinstance(value, dict)


def _described(expected: Any) -> str:
    """The type `expected` in the words of an error message: `an integer`, `a string or null`..."""
    if _optional(expected):
        return " or ".join([*(_described(arg) for arg in get_args(expected) if arg is not type(None)), "null"])
    if get_origin(expected) is Literal:
        return "one of " + ", ".join(json.dumps(choice) for choice in get_args(expected))
    if get_origin(expected) is list:
        return "a list"
    return _SCALARS.get(expected, "an object")


def _shown(value: Any, limit: int = 40) -> str:
    """`value` as an error message quotes it: its JSON text (cut at `limit` characters), or what it is."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "..."


@cache
def _fields(kind: type) -> tuple[dict[str, Any], frozenset[str]]:
    """The fields of a dataclass or TypedDict with their types, and the names of the required ones."""
    types = get_type_hints(kind)
    if is_typeddict(kind):
        return types, kind.__required_keys__
    return types, frozenset(f.name for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING)


def upgraded(record: dict[str, Any]) -> dict[str, Any]:
    """`record` as the current schema states it: what older records lacked at the values those runs
    computed with (OLDER_FIELDS, OLDER_CONFIG, OLDER_CONFIG_OF), and before schema 3, a step's whole
    batch as trainer.batch_size and a train record's batch_size (they held the micro-batch).
    A record of the current schema is returned as it is; `record` itself is never changed."""
    schema = record["schema"]
    if schema >= SCHEMA:
        return record
    record = {**OLDER_FIELDS, **record}
    if not isinstance(record.get("config"), dict):
        return record
    config = _filled(record["config"], OLDER_CONFIG)
    for (key, value), defaults in OLDER_CONFIG_OF.items():
        if record.get(key) == value:
            config = _filled(config, defaults)
    record["config"] = config
    trainer = config["trainer"]
    if schema < 3 and isinstance(trainer, dict) and all(isinstance(trainer.get(key), int)
                                                         for key in ("batch_size", "accumulate")):
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
