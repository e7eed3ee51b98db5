"""Values out of their range, and keys that do not fit together, fail at start-up: one line naming the
key, its value and its range, exit status 2, nothing written; in a sweep the job with the bad value
fails alone. The ranges themselves: every numeric key has one, each is enforced, and no shipped
config is refused. And the lines that said too little: a clash of config files, an override Hydra
cannot parse, advice that named another command's key."""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from pathlib import Path
from typing import Any, Iterator

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig, OmegaConf

from lra.config import (
    CONF_DIR, ENTRY_SCHEMAS, UNHASHED, Number, Range, ReportConfig, at_least, check_ranges, field_range,
    ranged_fields, technique_fields, unhashed_keys,
)
from lra.engine.benchmark import check_bench_config
from lra.engine.compression import check_settings
from lra.engine.training import check_train_config, failed_record
from lra.errors import LRAError
from lra.jobs import previous_records
from lra.records import RECORDS_FILE, read_records, write_records
from models.attention import ATTENTION, build_attention
from tasks import TASKS, task_config
from tests.conftest import TINY, run_main
from tests.faults import files_under, one_error_line

MODELS = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))
TASK_OPTIONS = sorted(path.stem for path in (CONF_DIR / "task").glob("*.yaml"))
EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
BENCH = ["model.num_layers=1", "model.dim=32", "model.num_heads=2", "model.mlp_dim=64", "bench.seq_lens=[16]"]
# Each command as a user calls it, its output going to `run` (a directory that must not appear).
COMMANDS = {
    "lra-train": ("runners.train", lambda run: [*TINY, f"hydra.run.dir={run}"]),
    "lra-bench": ("runners.bench", lambda run: [*BENCH, f"hydra.run.dir={run}"]),
    "lra-compress": ("runners.compress", lambda run: [f"run={run.parent / 'trained'}", f"hydra.run.dir={run}"]),
    "lra-data": ("runners.data", lambda run: []),  # each case names its subcommand and `--out {run}`
}

# (command, its arguments, what the line must name: the key with its value, the range or the other key)
BAD_VALUES = [
    ("lra-train", "trainer.batch_size=0", "trainer.batch_size=0", "must be at least 1"),
    ("lra-train", "trainer.max_steps=0", "trainer.max_steps=0", "must be at least 1"),
    ("lra-train", "trainer.eval_every=0", "trainer.eval_every=0", "must be at least 1"),
    ("lra-train", "trainer.checkpoint_every=-5", "trainer.checkpoint_every=-5", "must be at least 1"),
    ("lra-train", "trainer.eval_batches=0", "trainer.eval_batches=0", "must be at least 1, or null"),
    ("lra-train", "optimizer.lr=-1", "optimizer.lr=-1.0", "must be greater than 0"),
    ("lra-train", "optimizer.weight_decay=-0.1", "optimizer.weight_decay=-0.1", "must be at least 0"),
    ("lra-train", "optimizer.beta2=1", "optimizer.beta2=1.0", "must be in [0, 1)"),
    ("lra-train", "optimizer.warmup_steps=-1", "optimizer.warmup_steps=-1", "must be at least 0"),
    ("lra-train", "optimizer.grad_clip=0", "optimizer.grad_clip=0.0", "must be greater than 0, or null"),
    ("lra-train", "model.dropout=1.5", "model.dropout=1.5", "must be in [0, 1)"),
    ("lra-train", "model.attention.dropout=-0.1", "model.attention.dropout=-0.1", "must be in [0, 1)"),
    ("lra-train", "seed=-1", "seed=-1", "must be in [0, 4294967295]"),
    ("lra-train", "seed=4294967296", "seed=4294967296", "must be in [0, 4294967295]"),
    ("lra-train", "model.qkv_dim=0", "model.qkv_dim=0", "must be at least 1, or null"),
    ("lra-train", "task.max_len=0", "task.max_len=0", "must be at least 1"),
    ("lra-train", "task.generate.min_len=-1", "task.generate.min_len=-1", "must be at least 0"),
    ("lra-train", "hardware.pad_multiple=0", "hardware.pad_multiple=0", "must be at least 1, or null"),
    ("lra-train", "distill.temperature=0", "distill.temperature=0.0", "must be greater than 0"),
    ("lra-train", "distill.alpha=1.5", "distill.alpha=1.5", "must be in [0, 1]"),
    ("lra-train", "model=bigbird model.attention.block=0", "model.attention.block=0", "must be at least 1"),
    ("lra-train", "model=routing model.attention.decay=1", "model.attention.decay=1.0", "must be in [0, 1)"),
    # keys that must fit together, each named
    ("lra-train", "model.num_heads=5", "model.dim: 32", "model.num_heads=5"),
    ("lra-train", "trainer.accumulate=3", "trainer.accumulate=3", "trainer.batch_size=16"),
    ("lra-train", "task.generate.min_len=47", "task.generate.max_len=48", "task.generate.min_len=47"),
    ("lra-bench", "bench.seq_lens=[16,0]", "bench.seq_lens[1]=0", "must be at least 1"),
    ("lra-bench", "bench.min_run_time=0", "bench.min_run_time=0.0", "must be greater than 0"),
    ("lra-bench", "hardware.bench_batch_size=0", "hardware.bench_batch_size=0", "must be at least 1"),
    ("lra-bench", "hardware.cpu_memory_cap_mb=0", "hardware.cpu_memory_cap_mb=0.0", "greater than 0, or null"),
    # lra-bench's batch is bench.batch_size: that is what trainer.accumulate must divide there
    ("lra-bench", "bench.batch_size=4 trainer.accumulate=3", "trainer.accumulate=3", "bench.batch_size=4"),
    ("lra-compress", "sparsities=[0.5,1.0]", "sparsities[1]=1.0", "must be in [0, 1)"),
    ("lra-compress", "finetune_steps=-1", "finetune_steps=-1", "must be at least 0"),
    ("lra-compress", "finetune_lr=0", "finetune_lr=0.0", "must be greater than 0"),
    ("lra-data", "listops --out {run} --train 0", "--train=0", "must be at least 1"),
    ("lra-data", "listops --out {run} --max-args 1", "--max-args=1", "must be at least 2"),
    ("lra-data", "listops --out {run} --seed -1", "--seed=-1", "must be in [0, 4294967295]"),
    ("lra-data", "listops --out {run} --min-len 50 --max-len 51", "--max-len=51", "--min-len=50"),
    ("lra-data", "pathfinder --out {run} --count 1", "--count=1", "must be at least 2"),
    ("lra-data", "pathfinder --out {run} --workers 0", "--workers=0", "must be at least 1"),
]


@pytest.mark.parametrize("prog, args, naming", [(prog, args, naming) for prog, args, *naming in BAD_VALUES],
                         ids=[f"{prog}:{args}" for prog, args, *_ in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_it_and_nothing_is_written(prog: str, args: str, naming: list[str],
                                                                  tmp_path: Path):
    module, base = COMMANDS[prog]
    run = tmp_path / "run"
    result = run_main(module, *base(run), *args.format(run=run).split())
    one_error_line(result, f"{prog}: error", *naming)
    assert not run.exists(), files_under(run)


def test_the_cases_above_hold_many_distinct_bad_values_over_every_command():
    assert len({args for _, args, *_ in BAD_VALUES}) >= 35
    assert {prog for prog, *_ in BAD_VALUES} == set(COMMANDS)


def test_a_sweep_fails_the_job_with_a_bad_value_alone(tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = run_main("runners.train", "-m", *TINY, "trainer.batch_size=0,16", "trainer.max_steps=2",
                      f"data.root={tmp_path / 'data'}", f"hydra.sweep.dir={sweep}",
                      "hydra.callbacks.sweep.report=false")
    assert result.returncode == 1, result.stderr
    assert "sweep of 2 jobs, 2 records: 1 ok, 0 oom, 0 diverged, 1 failed" in result.stdout
    records = {record["batch_size"]: record for path in sweep.rglob(RECORDS_FILE) for record in read_records(path)}
    assert records[16]["status"] == "ok"
    assert (records[0]["status"], records[0]["error"]) == ("failed", "trainer.batch_size=0: must be at least 1")
    assert "Traceback" not in result.stderr


def test_a_sweep_whose_shared_value_is_bad_stops_before_its_first_job(tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = run_main("runners.train", "-m", *TINY, "seed=-1", "trainer.batch_size=8,16", f"hydra.sweep.dir={sweep}")
    one_error_line(result, "lra-train: error", "seed=-1", "must be in [0, 4294967295]")
    assert not sweep.exists()


@pytest.mark.parametrize("checked_first", [True, False], ids=["before-hydra", "in-the-job"])
def test_the_corrected_rerun_of_the_same_directory_runs_without_force(checked_first: bool, tmp_path: Path):
    """The check before Hydra writes anything, or (without that callback) the job's own check: either
    way nothing that would make the rerun refuse to start, no records and no checkpoints."""
    run = tmp_path / "run"
    args = [*TINY, "trainer.max_steps=2", f"data.root={tmp_path / 'data'}", f"hydra.run.dir={run}"]
    callback = [] if checked_first else ["~hydra.callbacks.check"]
    bad = run_main("runners.train", *args, *callback, "optimizer.lr=-1")
    one_error_line(bad, "lra-train: error", "optimizer.lr=-1.0", "must be greater than 0")
    assert not {RECORDS_FILE, "checkpoints"} & {path.split("/")[0] for path in files_under(run)}
    assert run.exists() is not checked_first
    good = run_main("runners.train", *args, *callback)
    assert good.returncode == 0, good.stderr
    assert read_records(run / RECORDS_FILE)[0]["status"] == "ok"


@functools.cache
def composed(config: str, *overrides: str) -> DictConfig:
    """The real config `config` with `overrides` (composed once per test process: composing is slow)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config, overrides=list(overrides))


SHIPPED = [f"model={model}" for model in MODELS] + [f"task={task}" for task in TASK_OPTIONS]


@pytest.mark.parametrize("hardware", ["cpu", "gpu"])
def test_every_model_and_task_option_passes_its_checks_on_each_profile(hardware: str):
    for option in SHIPPED:
        check_train_config(composed("train", option, f"hardware={hardware}"))
    check_bench_config(composed("bench", f"hardware={hardware}"))  # its model: lra-train's


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_passes_its_checks(experiment: str):
    check_train_config(composed("train", f"experiment={experiment}"))


def test_the_compress_defaults_pass_their_checks():
    check_settings(composed("compress", "run=x"))


def ranged_leaves(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, Range]]:
    """(full key, range) of every value under `node` whose field has a range."""
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        for name, bounds, _ in ranged_fields(schema):
            yield prefix + name, bounds
    for name, child in node.items_ex(resolve=False):
        if isinstance(child, DictConfig):
            yield from ranged_leaves(child, f"{prefix}{name}.")


def below(bounds: Range) -> Number:
    """A value below `bounds`, of the type of its low end (an int field takes it; a float field too)."""
    return bounds.low if bounds.low_open else bounds.low - 1


@pytest.mark.parametrize("config, overrides", [
    *(("train", (option, "hardware=cpu")) for option in SHIPPED),
    ("bench", ("hardware=cpu",)), ("compress", ("run=x",))])
def test_every_range_is_enforced_with_the_full_key(config: str, overrides: tuple[str, ...]):
    cfg = composed(config, *overrides).copy()
    keys = list(ranged_leaves(cfg))
    assert len(keys) >= 5
    for key, bounds in keys:
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        saved = OmegaConf.to_container(node, resolve=False)[name]  # an interpolation stays one
        listed = isinstance(node[name], ListConfig)
        node[name] = [below(bounds)] if listed else below(bounds)
        with pytest.raises(LRAError, match=f"^{re.escape(key + ('[0]' if listed else ''))}="):
            check_ranges(cfg)
        node[name] = saved
    check_ranges(cfg)  # every value put back


def schemas() -> set[type]:
    """Every schema dataclass: the entry points', the report's, each variant's and task's, and those they nest."""
    found: set[type] = set()
    roots = [*ENTRY_SCHEMAS, ReportConfig, *(ATTENTION.get(name)[1] for name in ATTENTION.names()),
             *(TASKS.get(name)[1] for name in TASKS.names())]

    def add(schema: type) -> None:
        if schema in found:
            return
        found.add(schema)
        for kind in typing.get_type_hints(schema).values():
            if dataclasses.is_dataclass(kind):
                add(kind)

    for root in roots:
        add(root)
    return found


NUMBERS = {int, float}
# Numeric fields with no range, each with the reason (`Class.field`).
WITHOUT_RANGE = {
    "PathfinderConfig.resolution",  # one of tasks.pathfinder_draw.RESOLUTIONS, not a range (PathfinderConfig.check)
    "PathXConfig.resolution",  # the same field
}


def numeric(kind: Any) -> bool:
    """Whether a field's type holds numbers: int, float, optional, or a list of them."""
    if kind in NUMBERS:
        return True
    arguments = set(typing.get_args(kind)) - {type(None)}
    return typing.get_origin(kind) in (typing.Union, list) and len(arguments) == 1 and arguments <= NUMBERS


def test_every_numeric_field_of_every_schema_has_a_range():
    missing = set()
    numeric_fields = 0
    for schema in schemas():
        hints = typing.get_type_hints(schema)
        for item in dataclasses.fields(schema):
            if numeric(hints[item.name]):
                numeric_fields += 1
                if field_range(schema, item.name) is None:
                    missing.add(f"{schema.__name__}.{item.name}")
    assert numeric_fields > 80  # the walk above found the schemas
    assert missing == WITHOUT_RANGE


def test_range_metadata_combines_with_the_other_metadata():
    assert "trainer.log_every" in unhashed_keys() and "hardware.pad_multiple" in unhashed_keys()
    assert {item.key for item in technique_fields()} >= {"trainer.accumulate", "model.encoder.embed_dim"}
    assert (UNHASHED | at_least(1))["hashed"] is False


def test_a_subclass_that_changes_a_default_keeps_the_range():
    with pytest.raises(LRAError, match=r"^model\.attention\.window=0: must be at least 1$"):
        build_attention("etc", num_heads=2, head_dim=8, max_len=64, window=0)
    with pytest.raises(LRAError, match=r"^task\.num_classes=1: must be at least 2$"):
        task_config(OmegaConf.merge(composed("train", "task=image").task, {"num_classes": 1})).check()


@pytest.mark.parametrize("override, naming", [
    # a length that is no image's pixels: task.resolution follows task.max_len (its square root)
    ("task=pathfinder task.max_len=1000", ("task.resolution=31", "task.max_len=1000", "1024, 4096, 16384")),
    ("task=pathx task.max_len=1000", ("task.max_len=1000", "task.resolution=128", "16384")),
    ("task=recall task.pairs=4 task.keys=3", ("task.keys", "task.pairs", "got 3")),
    ("task=text task.val_fraction=1", ("task.val_fraction=1.0", "must be in (0, 1), or null")),
    ("model.encoder.embed_dim=128", ("model.encoder.embed_dim", "model.dim=64")),
])
def test_task_and_model_keys_that_do_not_fit_together_are_named(override: str, naming: tuple[str, ...]):
    with pytest.raises(LRAError) as error:
        check_train_config(composed("train", *override.split()))
    for name in naming:
        assert name in str(error.value)


@pytest.mark.parametrize("args, naming", [
    # a clash of config files: the key is on Hydra's second line
    ("experiment=smoke task=text", ("In 'experiment/smoke': task.generate: Key 'generate' not in 'TextConfig'",)),
    ("++x", ("++x: missing EQUAL",)),
    ("seed=[1", ("seed=[1: no viable alternative",)),
    # a missing config group option is an OSError to Python: still the group's options
    ("hydra/launcher=nope", ("hydra/launcher=nope: no such hydra/launcher; choose one of:", "joblib")),
])
def test_hydra_errors_whose_key_or_reason_is_on_a_later_line_name_it(args: str, naming: tuple[str, ...],
                                                                     tmp_path: Path):
    result = run_main("runners.train", *args.split(), f"hydra.run.dir={tmp_path / 'run'}")
    one_error_line(result, "lra-train: error", *naming)


def test_in_a_sweep_a_directory_of_another_config_names_the_sweep_directory(tmp_path: Path):
    cfg = composed("train", *TINY)
    write_records(tmp_path, [failed_record(cfg, "failed", "an earlier job", 0.0)])
    with pytest.raises(LRAError, match="force=true replaces them, or choose another hydra.sweep.dir$"):
        previous_records(tmp_path, "another", False, (), "hydra.sweep.dir")
