"""Records read through one validated schema (lra.records): a record this code cannot interpret, of a
newer schema, a foreign writer or damaged, is one error line naming its file, line and field, and
nothing is written; never a silently wrong row. And IMDb reviews or labels holding no value are
an error naming the file, row and column, never trained on as the text "nan"."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, get_type_hints

import pandas as pd
import pytest

from lra.records import (
    KINDS, NEEDED_METRICS, SCHEMA, Metrics, Record, Validation, make_record, read_records, record_problem,
)
from lra.report import load_records
from lra.sweep import STARTED, SweepEnd, summary, sweep_jobs
from tasks.samples import write_imdb
from tests.conftest import compose_config, run_main
from tests.faults import files_under, one_error_line
from tests.report_fixtures import bench, compress, learned, train, write

CURRENT = {"schema": SCHEMA, "techniques": [], "precision": "fp32", "compression": None, "protocol": "clean"}


def current_train() -> dict:
    """A finished train record of the current schema, with a validation history of two entries."""
    return {**learned("full-sdpa", "listops", [0.3, 0.4]), **CURRENT}


def current_bench() -> dict:
    return {**bench("linear", 1024, steps=4.0, memory=2.0), **CURRENT}


def changed(edit: Callable[[dict], Any], base: Callable[[], dict] = current_train) -> Callable[[], dict]:
    """A record made from `base()` by `edit` (which changes it in place)."""

    def make() -> dict:
        record = copy.deepcopy(base())
        edit(record)
        return record

    return make


def setting(*path: str, value: Any) -> Callable[[dict], None]:
    """An edit setting the field at `path` (keys, or indices of lists) to `value`."""

    def edit(record: dict) -> None:
        node = record
        for key in path[:-1]:
            node = node[int(key) if isinstance(node, list) else key]
        node[int(path[-1]) if isinstance(node, list) else path[-1]] = value

    return edit


def dropping(*path: str) -> Callable[[dict], None]:
    """An edit deleting the field at `path`."""

    def edit(record: dict) -> None:
        node = record
        for key in path[:-1]:
            node = node[int(key) if isinstance(node, list) else key]
        del node[path[-1]]

    return edit


def moving_test_accuracy(record: dict) -> None:
    """An edit moving metrics.test_accuracy where another writer might keep it: metrics.test.accuracy."""
    record["metrics"]["test"] = {"accuracy": record["metrics"].pop("test_accuracy")}


def raw(line: bytes) -> Callable[[], bytes]:
    """A line that is no JSON object, written as it is."""
    return lambda: line


# (what is wrong, the line written second in a records.jsonl, what the error line must say of it)
MALFORMED = [
    ("newer schema", changed(setting("schema", value=SCHEMA + 1)),
     f"written by a newer lra-bench (schema {SCHEMA + 1}; this reads up to {SCHEMA})"),
    ("schema as text", changed(setting("schema", value=str(SCHEMA))), f'schema: expected an integer, got "{SCHEMA}"'),
    ("schema 0", changed(setting("schema", value=0)), f"schema: expected 1 to {SCHEMA}, got 0"),
    ("schema true", changed(setting("schema", value=True)), "schema: expected an integer, got true"),
    ("no schema", changed(dropping("schema")), "not a run record (missing: schema)"),
    ("unknown status", changed(setting("status", value="succeeded")),
     'status: expected one of "ok", "oom", "diverged", "failed", "skipped", got "succeeded"'),
    ("unknown kind", changed(setting("kind", value="eval")), 'kind: expected one of "train", "bench", "compress"'),
    ("techniques as a string", changed(setting("techniques", value="abc")), 'techniques: expected a list, got "abc"'),
    ("a technique not a string", changed(setting("techniques", value=["reversible", 3])),
     "techniques[1]: expected a string, got 3"),
    ("techniques as a string, schema 2", changed(setting("techniques", value="abc"),
                                                 lambda: train("full-sdpa", "text", 0.6, techniques=[])),
     'techniques: expected a list, got "abc"'),
    ("metrics missing", changed(dropping("metrics")), "not a run record (missing: metrics)"),
    ("metrics a list", changed(setting("metrics", value=[0.9])), "metrics: expected an object, got a list"),
    ("test accuracy as text", changed(setting("metrics", "test_accuracy", value="0.9")),
     'metrics.test_accuracy: expected a number, got "0.9"'),
    ("test accuracy moved", changed(moving_test_accuracy),
     "metrics: missing test_accuracy (in every ok train record)"),
    ("memory as true", changed(setting("metrics", "peak_memory_mb", value=True)),
     "metrics.peak_memory_mb: expected a number or null, got true"),
    ("degenerate as text", changed(setting("metrics", "test_degenerate", value="no")),
     'metrics.test_degenerate: expected true or false, got "no"'),
    ("history entry without step", changed(dropping("metrics", "history", "1", "step")),
     "metrics.history[1]: missing step"),
    ("history step as text", changed(setting("metrics", "history", "1", "step", value="abc")),
     'metrics.history[1].step: expected an integer, got "abc"'),
    ("history entry a number", changed(setting("metrics", "history", "0", value=0.5)),
     "metrics.history[0]: expected an object, got 0.5"),
    ("history an object", changed(setting("metrics", "history", value={"step": 10})),
     "metrics.history: expected a list, got an object"),
    ("seed as text", changed(setting("seed", value="0")), 'seed: expected an integer, got "0"'),
    ("seq_len a float", changed(setting("seq_len", value=128.5)), "seq_len: expected an integer, got 128.5"),
    ("config as text", changed(setting("config", value="model=full")),
     'config: expected an object, got "model=full"'),
    ("model null", changed(setting("model", value=None)), "model: expected a string, got null"),
    ("compression a number", changed(setting("compression", value=8)),
     "compression: expected a string or null, got 8"),
    ("error a list", changed(setting("error", value=["boom"])), "error: expected a string or null, got a list"),
    ("env as text", changed(setting("env", value="cpu")), 'env: expected an object, got "cpu"'),
    ("wall_s as text", changed(setting("wall_s", value="1s")), 'wall_s: expected a number, got "1s"'),
    ("config_hash a number", changed(setting("config_hash", value=123)), "config_hash: expected a string, got 123"),
    ("current schema without protocol", changed(dropping("protocol")), "not a run record (missing: protocol)"),
    ("bench without mode", changed(dropping("metrics", "mode"), current_bench),
     "metrics: missing mode (in every ok bench record)"),
    ("bench of an unknown mode", changed(setting("metrics", "mode", value="eval"), current_bench),
     'metrics.mode: expected one of "train", "infer", got "eval"'),
    ("a JSON array", raw(b'["train", "full-sdpa"]'), "not a run record: expected a JSON object, got a list"),
    ("a JSON number", raw(b"42"), "not a run record: expected a JSON object, got 42"),
    ("not JSON", raw(b'{"schema": 5,'), "not a JSON record"),
    ("not UTF-8", raw(b'{"model": "\xff"}'), "not UTF-8 text"),
]


@pytest.mark.parametrize("make, says", [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_a_record_the_report_cannot_interpret_is_one_line_naming_file_line_and_field(make, says, tmp_path: Path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    path = write(runs / "job", current_train()) / "records.jsonl"
    bad = make()
    with path.open("ab") as file:
        file.write(bad if isinstance(bad, bytes) else json.dumps(bad).encode())
        file.write(b"\n")
    result = run_main("runners.report", f"runs={runs}", f"out={out}")
    line = one_error_line(result, "lra-report", f"{path}:2: ", says, code=2)
    assert line.startswith("lra-report: error: ")
    assert files_under(out) == set()


def test_a_record_of_every_schema_version_is_read(tmp_path: Path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    records = {1: train("full-math", "listops", 0.4), 2: train("local", "listops", 0.35, techniques=["reversible"]),
               3: {**train("linear", "listops", 0.3, precision="bf16"), "schema": 3},
               4: learned("performer", "listops", [0.2, 0.33]), 5: current_train()}
    assert sorted(records) == list(range(1, SCHEMA + 1))
    write(runs / "a", *records.values())
    assert [record["schema"] for record in read_records(runs / "a" / "records.jsonl")] == list(records)
    result = run_main("runners.report", f"runs={runs}", f"out={out}")
    assert result.returncode == 0, result.stderr
    table = (out / "leaderboard.md").read_text()
    for row, accuracy in [("full-math", "40.00"), ("local + reversible", "35.00"), ("linear + bf16", "30.00"),
                          ("performer", "33.00"), ("full-sdpa", "40.00")]:
        assert re.search(rf"\| {re.escape(row)} +\| {accuracy}", table), row


def written(kind: str, status: str, metrics: dict, **fields: Any) -> dict:
    """A record `make_record` makes of the real config of `kind` (lra-compress: the trained run's), read
    back from its JSON text."""
    cfg = compose_config(config="bench" if kind == "bench" else "train")
    record = make_record(cfg, kind=kind, status=status, metrics=metrics, seq_len=cfg.task.max_len, batch_size=8,
                         env={"device": "cpu", "threads": 1}, wall_s=1.23456, **fields)
    return json.loads(json.dumps(record))


def test_what_make_record_writes_is_what_the_reader_reads_for_every_kind(tmp_path: Path):
    history = [asdict(Validation(step=10, train_seconds=1.5, examples=320, val_accuracy=0.5, val_loss=0.69))]
    trained = {"steps": 10, "processes": 1, "micro_batch_size": 32, "accumulate": 1, "history": history,
               "train_loss": 0.7, "train_loss_soft": 0.1, "weights_mb": 0.5, "tested": "best",
               "test_accuracy": 0.5, "test_examples": 64, "test_majority_rate": 0.5, "test_top_class_share": 0.6,
               "test_degenerate": False, "test_loss": 0.69, "val_accuracy": 0.5, "last_val_accuracy": None,
               "val_examples": 64, "steps_per_s": 3.0, "tokens_per_s": 300.0, "peak_memory_mb": None,
               "memory_measure": None}
    measured = {"mode": "train", "steps_per_s": 3.0, "tokens_per_s": 300.0, "peak_memory_mb": 1.5,
                "memory_measure": "live_tensor_bytes", "masked_fraction": 0.0, "sdpa_backend": None,
                "sdpa_seq_len": None, "sdpa_mask": None, "sdpa_padded": None, "peak_rss_mb": 300.0,
                "matmul_tflops": 0.1, "flops_per_step": 1000, "flops_counted_on": "meta", "tflops": 0.01}
    compressed = {"test_accuracy": 0.5, "val_accuracy": 0.5, "val_loss": 0.7, "prediction_agreement": 0.9,
                  "infer_steps_per_s": 9.0, "infer_tokens_per_s": 900.0, "infer_peak_memory_mb": 1.0,
                  "weights_mb": 0.2, "sparsity": 0.5, "finetune_steps": 20}
    records = [written("train", "ok", trained), written("train", "failed", {}, error="RuntimeError: boom"),
               written("bench", "ok", measured), written("bench", "oom", {"mode": "infer"}, error="out of memory"),
               written("compress", "ok", compressed, compression="pruned 50%"), written("compress", "failed", {})]
    assert {record["kind"] for record in records} == set(KINDS)
    assert all(set(record) == set(get_type_hints(Record)) for record in records)
    assert [record_problem(record) for record in records] == [None] * len(records)
    path = write(tmp_path / "run", *records) / "records.jsonl"
    assert read_records(path) == records


def test_make_record_refuses_what_the_reader_would(tmp_path: Path):
    with pytest.raises(ValueError, match="status: expected one of"):
        written("train", "done", {})
    with pytest.raises(ValueError, match='metrics.steps: expected an integer, got "10"'):
        written("train", "diverged", {"steps": "10"})
    with pytest.raises(ValueError, match="metrics: missing mode"):
        written("bench", "failed", {})


def test_the_metrics_each_kind_needs_are_declared_metrics():
    declared = get_type_hints(Metrics)
    assert set(NEEDED_METRICS) == set(KINDS)
    assert {name for needed in NEEDED_METRICS.values() for names in needed for name in names} <= set(declared)


def test_a_sweep_holding_a_foreign_record_names_it_fails_and_gets_no_report(tmp_path: Path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / STARTED).touch()
    for name, record in [("good", current_train()), ("foreign", {**current_train(), "status": "succeeded"})]:
        write(sweep / name, record)
        (sweep / name / ".hydra").mkdir()
        (sweep / name / ".hydra" / "overrides.yaml").write_text("[]\n")
    foreign = sweep / "foreign" / "records.jsonl"
    line, failed = summary("lra-train", sweep_jobs(sweep))
    assert failed and "1 ok" in line
    assert f"1 jobs' records unreadable, e.g. {foreign}:1: status: expected one of" in line
    SweepEnd("lra-train", out=str(tmp_path / "out")).write_report(sweep)
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("lra-report: no report of this sweep: ") and f"{foreign}:1: status:" in line
    assert files_under(tmp_path / "out") == set()


def test_a_rerun_into_a_directory_of_a_newer_schema_is_refused_and_leaves_it(tmp_path: Path):
    run = tmp_path / "run"
    path = write(run, current_train() | {"schema": SCHEMA + 1}) / "records.jsonl"
    before = path.read_bytes()
    result = run_main("runners.train", "experiment=smoke", f"data.root={tmp_path / 'data'}", f"hydra.run.dir={run}")
    one_error_line(result, "lra-train", f"{path}:1: written by a newer lra-bench (schema {SCHEMA + 1}", code=2)
    assert path.read_bytes() == before


def test_records_load_as_before_through_the_one_reader(tmp_path: Path):
    runs = write(tmp_path / "runs", current_train(), compress("full-sdpa", "listops", "int8", 0.4),
                 bench("full-math", 4096, status="oom"))
    records = load_records(runs)
    assert records["status"].tolist() == ["ok", "ok", "oom"]
    assert records["techniques"].tolist() == [[], [], []] and records["protocol"].tolist() == ["clean"] * 3


# --- IMDb reviews and labels holding no value ----------------------------------------------------


def text_run(tmp_path: Path, suffix: str, edit: Callable[[pd.DataFrame], None]) -> tuple[Path, Any]:
    """lra-train on a tiny IMDb whose training file (`suffix`) `edit` changed: its file and the result."""
    root = tmp_path / "data"
    write_imdb(root / "imdb", rows=8, suffix=suffix)
    path = root / "imdb" / "plain_text" / f"train-00000-of-00001{suffix}"
    frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path, keep_default_na=False)
    edit(frame)
    frame.to_parquet(path) if suffix == ".parquet" else frame.to_csv(path, index=False)
    result = run_main("runners.train", "task=text", "task.max_len=16", "model.num_layers=1", "model.dim=16",
                      "model.mlp_dim=16", "trainer.max_steps=2", "trainer.progress=false", f"data.root={root}",
                      f"hydra.run.dir={tmp_path / 'run'}")
    return path, result


def emptying(column: str, row: int) -> Callable[[pd.DataFrame], None]:
    """An edit leaving no value at (0-based) `row` of `column`: a null, in a csv file an empty field."""

    def edit(frame: pd.DataFrame) -> None:
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = None

    return edit


@pytest.mark.parametrize("suffix, edit, says", [
    (".parquet", emptying("text", 3), "row 4: text is null"),
    (".csv", emptying("text", 3), "row 4: text is missing (an empty field)"),
    (".parquet", emptying("label", 5), "row 6: label is null"),
    (".csv", emptying("label", 5), "row 6: label is missing (an empty field)"),
], ids=["parquet review", "csv review", "parquet label", "csv label"])
def test_a_review_or_label_holding_no_value_is_one_line_naming_file_row_and_column(suffix, edit, says,
                                                                                    tmp_path: Path):
    path, result = text_run(tmp_path, suffix, edit)
    one_error_line(result, "lra-train", f"{path}: {says}", code=2)
    assert "records.jsonl" not in files_under(tmp_path / "run")


def numbering(frame: pd.DataFrame) -> None:
    """An edit putting numbers, not text, in the text column."""
    frame["text"] = range(len(frame))


def test_a_review_that_is_not_text_is_one_line_naming_file_row_and_column(tmp_path: Path):
    path, result = text_run(tmp_path, ".parquet", numbering)
    one_error_line(result, "lra-train", f"{path}: row 1: text is not a string (got int 0)", code=2)
    assert "records.jsonl" not in files_under(tmp_path / "run")
