"""Sweeps: named sweeps and experiments, launchers, failure isolation, resume, force."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate

from lra.config import CONF_DIR
from lra.records import read_records
from lra.sweep import STARTED, SweepEnd, summary, sweep_jobs
from tests.conftest import REPO, TINY, run_cli, run_main
from tests.report_fixtures import sample_runs

MODELS = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))
TASKS = sorted(path.stem for path in (CONF_DIR / "task").glob("*.yaml"))
EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))


def sweep_jobs_of(config: str, *overrides: str) -> list[dict[str, str]]:
    """The jobs Hydra's basic sweeper launches for `config -m overrides`, each as {key: value}."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config, overrides=list(overrides), return_hydra_config=True)
        params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.params or {}).items()]
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        [batch] = BasicSweeper.split_arguments(parser.parse_overrides([*params, *overrides]), None)
    return [dict(item.split("=", 1) for item in job) for job in batch]


def records_by_dir(sweep: Path) -> dict[str, list[dict]]:
    return {path.parent.name: read_records(path) for path in sorted(sweep.rglob("records.jsonl"))}


def test_the_leaderboard_sweep_is_every_trained_variant_on_every_task_with_three_seeds():
    jobs = sweep_jobs_of("train", "+sweep=leaderboard")
    trained = [model for model in MODELS if model != "full_math"]
    lra_tasks = [task for task in TASKS if task != "recall"]  # recall is this project's task, not LRA's
    assert len(jobs) == len(trained) * len(lra_tasks) * 3
    assert {(job["model"], job["task"], job["seed"]) for job in jobs} == {
        (model, task, str(seed)) for model in trained for task in lra_tasks for seed in range(3)
    }


def test_the_scaling_sweep_benches_every_variant_and_the_seeds_sweep_repeats_one_row():
    assert sorted(job["model"] for job in sweep_jobs_of("bench", "+sweep=scaling")) == MODELS
    seeds = sweep_jobs_of("train", "+sweep=seeds", "model=performer")
    assert [job["seed"] for job in seeds] == ["0", "1", "2", "3", "4"]
    assert all(job["model"] == "performer" for job in seeds)


# Overrides that shrink each task's data to seconds, for the experiments on that task.
SMALL_DATA = {
    "listops": ["task.generate.train=200", "task.generate.val=32", "task.generate.test=32", "task.generate.min_len=8",
                "task.generate.max_len=48", "task.max_len=48"],
    "recall": ["task.examples.train=200", "task.examples.val=32", "task.examples.test=32", "task.max_len=80"],
    "pathfinder": ["task.generate.count=100"],
}


def experiment_task(experiment: str) -> str:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment={experiment}"]).task.name


@pytest.mark.parametrize("task", sorted(SMALL_DATA))
def test_every_experiment_runs_a_few_steps_in_one_sweep(task: str, tmp_path: Path):
    experiments = [experiment for experiment in EXPERIMENTS if experiment_task(experiment) == task]
    sweep = tmp_path / "sweep"
    result = run_main(
        "runners.train", "-m", f"experiment={','.join(experiments)}", *SMALL_DATA[task], "trainer.max_steps=3",
        f"data.root={tmp_path / 'data'}", f"hydra.sweep.dir={sweep}", "hydra.callbacks.sweep.report=false",
    )
    assert result.returncode == 0, result.stderr
    records = [record for found in records_by_dir(sweep).values() for record in found]
    assert len(records) == len(experiments) >= 1
    assert all(record["status"] == "ok" and record["metrics"]["steps"] == 3 for record in records)
    assert f"sweep of {len(experiments)} jobs, {len(experiments)} records: {len(experiments)} ok" in result.stdout


def test_every_experiment_is_on_a_task_the_sweep_above_shrinks():
    assert {experiment_task(experiment) for experiment in EXPERIMENTS} <= set(SMALL_DATA)


CHAOS = {  # one job of each fate, each its own model so that the report shows each as a cell
    "raises": "defaults:\n  - override /model: linear\ndata:\n  generate: false\ntask:\n  dir: nowhere\n",
    "runs_out_of_memory": "defaults:\n  - override /model: local\nhardware:\n  cpu_memory_cap_mb: 0.2\n",
    "diverges": "defaults:\n  - override /model: linformer\noptimizer:\n  lr: 1.0e30\n",
    "is_fine": "defaults:\n  - override /model: full\n",
}


def chaos_configs(root: Path) -> Path:
    group = root / "chaos"
    group.mkdir(parents=True)
    for name, body in CHAOS.items():
        (group / f"{name}.yaml").write_text(f"# @package _global_\n{body}")
    return root


def test_a_sweep_survives_a_job_that_raises_one_out_of_memory_and_one_diverging(tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = run_main(
        "runners.train", "-m", f"+chaos={','.join(CHAOS)}", *TINY, f"data.root={tmp_path / 'data'}",
        f"hydra.searchpath=[file://{chaos_configs(tmp_path / 'conf')}]", f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 1, result.stderr
    assert "lra-train: sweep of 4 jobs, 4 records: 1 ok, 1 oom, 1 diverged, 1 failed, 0 skipped" in result.stdout
    statuses = {records[0]["model"]: (records[0]["status"], records[0]["error"])
                for records in records_by_dir(sweep).values()}
    assert statuses["full-sdpa"] == ("ok", None)
    assert statuses["local"][0] == "oom" and "exceed the cap of 0.2 MB" in statuses["local"][1]
    assert statuses["linformer"][0] == "diverged" and statuses["linformer"][1].startswith("loss became nan at step")
    assert statuses["linear"][0] == "failed" and "nowhere" in statuses["linear"][1]
    assert all("\n" not in (error or "") for _, error in statuses.values())
    table = (sweep / "leaderboard.md").read_text()
    assert "| local " in table and "| OOM " in table and "| FAIL " in table


def test_a_rerun_skips_finished_jobs_reruns_failed_ones_and_force_reruns_all(tmp_path: Path):
    sweep, data = tmp_path / "sweep", tmp_path / "data"

    def rerun(*overrides: str):
        return run_main("runners.train", "-m", "model=full,linear", *TINY, f"data.root={data}",
                        f"hydra.sweep.dir={sweep}", "hydra.callbacks.sweep.report=false", *overrides)

    assert rerun().returncode == 0
    first = records_by_dir(sweep)
    [linear] = [name for name in first if name.startswith("linear")]
    failed = {**first[linear][0], "status": "failed", "error": "RuntimeError: the node went away"}
    (sweep / linear / "records.jsonl").write_text(json.dumps(failed) + "\n")

    second = rerun()
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already finished for this config") == 1
    assert "sweep of 2 jobs, 2 records: 2 ok" in second.stdout and "1 jobs finished before, not rerun" in second.stdout
    again = records_by_dir(sweep)
    assert again[linear][0]["status"] == "ok"
    [full] = [name for name in first if name.startswith("full")]
    assert again[full] == first[full]  # untouched

    forced = rerun("force=true")
    assert forced.returncode == 0 and "already finished" not in forced.stdout
    assert records_by_dir(sweep)[full][0]["wall_s"] != first[full][0]["wall_s"]


def test_a_job_directory_holding_another_configs_records_is_refused(tmp_path: Path):
    run = tmp_path / "run"
    args = [*TINY, f"data.root={tmp_path / 'data'}", f"hydra.run.dir={run}"]
    assert run_main("runners.train", *args).returncode == 0
    other = run_main("runners.train", *args, "seed=1")
    assert other.returncode == 2
    [line] = other.stderr.strip().splitlines()
    assert line.startswith(f"lra-train: error: {run / 'records.jsonl'}: records of another config")
    assert "force=true" in line
    assert read_records(run / "records.jsonl")[0]["seed"] == 0


def test_the_summary_counts_this_sweeps_jobs_and_fails_on_a_job_without_records(tmp_path: Path):
    old = tmp_path / "old"
    (old / ".hydra").mkdir(parents=True)
    (old / ".hydra" / "overrides.yaml").write_text("[]\n")
    (tmp_path / STARTED).touch()
    earlier = (tmp_path / STARTED).stat().st_mtime - 60
    os.utime(old / ".hydra" / "overrides.yaml", (earlier, earlier))
    silent = tmp_path / "silent"
    (silent / ".hydra").mkdir(parents=True)
    (silent / ".hydra" / "overrides.yaml").write_text("[]\n")
    jobs = sweep_jobs(tmp_path)
    assert [job.path for job in jobs] == [silent]  # the job of an earlier sweep is not counted
    line, failed = summary("lra-train", jobs)
    assert failed and line == ("lra-train: sweep of 1 jobs, 0 records: 0 ok, 0 oom, 0 diverged, 0 failed, "
                               "0 skipped; 1 jobs wrote no records")


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_two_job_sweep_through_a_launcher_writes_both_records_and_the_report(tmp_path: Path, launcher):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "runners.train", "-m", "model=full,linear", *TINY, f"data.root={tmp_path / 'data'}",
        f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}", "hardware.threads=1", cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    records = records_by_dir(sweep)
    assert sorted(found[0]["model"] for found in records.values()) == ["full-sdpa", "linear"]
    assert all(found[0]["status"] == "ok" for found in records.values())
    table = (sweep / "leaderboard.md").read_text()
    assert "| full-sdpa " in table and "| linear " in table


@pytest.mark.parametrize("command", ["train", "bench", "compress"])
def test_every_sweeping_command_ends_its_sweeps_with_the_one_callback_under_its_own_name(command):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=command, overrides=["hydra.callbacks.sweep.reference=lra_paper"],
                      return_hydra_config=True)
    callback = instantiate(cfg.hydra.callbacks.sweep)
    assert isinstance(callback, SweepEnd)
    assert (callback.prog, callback.report, callback.reference) == (f"lra-{command}", True, "lra_paper")
    assert callback.out == cfg.hydra.sweep.dir


def test_the_sweep_report_without_records_says_so_in_one_line(tmp_path: Path, capsys):
    sweep = tmp_path / "sweep"
    SweepEnd("lra-train").write_report(sweep)
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("lra-report: no report of this sweep: ") and "no records.jsonl found" in line
    sample_runs(sweep)
    SweepEnd("lra-train", out=str(tmp_path / "elsewhere")).write_report(sweep)
    assert (tmp_path / "elsewhere" / "leaderboard.md").exists() and not (sweep / "leaderboard.md").exists()


def length_jobs(task: str) -> list[dict]:
    """The config of each job of `+sweep=lengths task=<task>`, as composed."""
    lengths = [job["task.max_len"] for job in sweep_jobs_of("train", "+sweep=lengths", f"task={task}")]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return [compose(config_name="train", overrides=[f"task={task}", f"task.max_len={length}"]).task
                for length in lengths]


def test_the_lengths_sweep_moves_every_length_of_a_task_with_its_max_len():
    listops = length_jobs("listops")
    assert [job.max_len for job in listops] == [128, 256, 512]
    assert [(job.generate.min_len, job.generate.max_len, job.dir) for job in listops] == [  # generated per length
        (16, 128, "listops-gen-128"), (32, 256, "listops-gen-256"), (64, 512, "listops-gen-512")]
    pathfinder = length_jobs("pathfinder")
    assert [(job.max_len, job.resolution, job.dir) for job in pathfinder] == [
        (1024, 32, "pathfinder32"), (4096, 64, "pathfinder64")]
    assert [(job.max_len, job.gap) for job in length_jobs("recall")] == [(64, 32), (128, 32), (256, 32)]
    assert [job.max_len for job in length_jobs("text")] == [job.max_len for job in length_jobs("retrieval")] == \
        [250, 500, 1000]


def test_a_task_without_a_length_knob_says_so_in_one_line(tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = run_main("runners.train", "-m", "+sweep=lengths", "task=image", f"hydra.sweep.dir={sweep}")
    assert result.returncode != 0 and "task.lengths" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not list(sweep.rglob("records.jsonl"))


def test_the_lengths_sweep_trains_each_variant_at_each_length_and_the_report_tables_them(tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = run_main(
        "runners.train", "-m", "+sweep=lengths", "task=recall", "model=full,local,linear", "task.lengths='80,96'",
        "task.gap=8", "task.examples.train=64", "task.examples.val=32", "task.examples.test=32",
        "trainer.max_steps=4", "trainer.eval_every=2", f"data.root={tmp_path / 'data'}", f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr
    records = [record for found in records_by_dir(sweep).values() for record in found]
    assert sorted((record["model"], record["seq_len"]) for record in records) == sorted(
        (model, length) for model in ("full-sdpa", "local", "linear") for length in (80, 96))
    assert all(len(record["metrics"]["history"]) == 2 for record in records)
    report = (sweep / "leaderboard.md").read_text()
    assert "Accuracy against length" in report
