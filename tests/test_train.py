"""lra-train end to end on tiny ListOps: records, TensorBoard, resume, divergence, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import lra.engine.loop as loop
from lra import checkpoint
from lra.engine.evaluation import predict
from lra.engine.resume import BEST
from lra.errors import LRAError
from lra.predictions import DEGENERATE_SHARE, split_metrics
from lra.records import read_records
from models.attention import Attention, list_attention
from models.encoder import Classifier
from runners.train import train_run
from tasks import load_task, task_config
from tests.conftest import REPO, run_cli, run_main

SCALARS = {"train/loss", "train/lr", "train/steps_per_s", "train/tokens_per_s", "val/accuracy", "test/accuracy"}


def test_a_run_writes_its_record_and_tensorboard_logs(tiny_cfg, tmp_path: Path):
    cfg = tiny_cfg("trainer.log_every=5")
    record = train_run(cfg, tmp_path / "run")
    [written] = read_records(tmp_path / "run" / "records.jsonl")
    assert written == json.loads(json.dumps(record))
    assert record["status"] == "ok" and record["error"] is None
    assert (record["kind"], record["model"], record["task"]) == ("train", "full-sdpa", "listops")
    assert record["hardware"] == "cpu"
    assert record["seq_len"] == cfg.task.max_len and record["batch_size"] == cfg.trainer.batch_size
    metrics = record["metrics"]
    assert metrics["steps"] == 20
    for key in ("test_accuracy", "val_accuracy", "test_majority_rate", "test_top_class_share"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["steps_per_s"] > 0 and metrics["tokens_per_s"] > metrics["steps_per_s"]
    assert metrics["peak_memory_mb"] > 0 and metrics["memory_measure"] == "live_tensor_bytes"
    assert record["config"]["model"]["dim"] == 32 and record["env"]["torch"] == torch.__version__
    # the learning curve: one entry per validation (smoke: every 10 steps), time only ever growing
    history = metrics["history"]
    assert [entry["step"] for entry in history] == [10, 20]
    assert [entry["examples"] for entry in history] == [10 * cfg.trainer.batch_size, 20 * cfg.trainer.batch_size]
    assert 0 < history[0]["train_seconds"] < history[1]["train_seconds"]
    assert max(entry["val_accuracy"] for entry in history) == metrics["val_accuracy"]  # the best is kept
    assert all(entry["val_loss"] > 0 for entry in history) and metrics["test_loss"] > 0

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert SCALARS <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10, 15, 20]
    assert [e.value for e in events.Scalars("val/loss")] == pytest.approx([entry["val_loss"] for entry in history])
    assert events.Scalars("test/accuracy")[0].value == pytest.approx(metrics["test_accuracy"])
    session = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info
    assert session.hparams["model.dim"].number_value == 32
    assert session.hparams["task.name"].string_value == "listops"


def test_test_accuracy_covers_the_whole_test_split_whatever_eval_batches(tiny_cfg, tmp_path: Path):
    cfg = tiny_cfg("trainer.eval_batches=1")  # periodic validation: the first batch of 16 examples
    metrics = train_run(cfg, tmp_path / "run")["metrics"]
    data = load_task(cfg.task, cfg.data, progress=False)
    assert len(data.test) == 64 > cfg.trainer.batch_size
    assert metrics["test_examples"] == 64 and metrics["val_examples"] == 16
    # the best checkpoint's predictions on every test example, computed here
    task = task_config(cfg.task)
    model = Classifier(cfg.model, task.vocab_size, task.num_classes, task.max_len)
    model.load_state_dict(checkpoint.load(tmp_path / "run" / BEST, fallback=False)["model"])
    predicted, labels, loss = predict(model, data.test, cfg, torch.device("cpu"))
    assert len(labels) == 64 and labels.tolist() == data.test.labels.tolist()
    assert metrics["test_accuracy"] == pytest.approx(float((predicted == labels).float().mean()))
    assert metrics["test_loss"] == pytest.approx(loss / 64) and loss > 0
    # the majority rate and the share of the commonest prediction are of the same 64 examples
    assert metrics["test_majority_rate"] == pytest.approx(labels.bincount().max().item() / 64)
    assert metrics["test_top_class_share"] == pytest.approx(predicted.bincount().max().item() / 64)
    assert metrics["test_degenerate"] == (metrics["test_top_class_share"] >= DEGENERATE_SHARE)


def test_a_predictor_giving_one_class_to_nearly_every_example_is_flagged():
    metrics = split_metrics("test", correct=48, predicted=[96, 4, 0], labels=[50, 30, 20])
    assert metrics == {"test_accuracy": 0.48, "test_examples": 100, "test_majority_rate": 0.5,
                       "test_top_class_share": 0.96, "test_degenerate": True}
    assert not split_metrics("test", correct=48, predicted=[94, 6, 0], labels=[50, 30, 20])["test_degenerate"]


@pytest.mark.parametrize("name", list_attention())
def test_every_attention_variant_trains_on_listops(tiny_cfg, tmp_path: Path, name):
    cfg = tiny_cfg(f"model={name}", "trainer.max_steps=6", "trainer.eval_every=6")
    record = train_run(cfg, tmp_path / "run")
    assert record["status"] == "ok", record["error"]
    assert record["config"]["model"]["attention"]["name"] == name
    assert 0.0 <= record["metrics"]["test_accuracy"] <= 1.0


def test_attention_hears_of_every_optimizer_step(tiny_cfg, tmp_path: Path, monkeypatch):
    calls = []
    monkeypatch.setattr(Attention, "on_train_step", lambda self: calls.append(self))
    train_run(tiny_cfg("model.num_layers=2"), tmp_path / "run")
    assert len(calls) == 20 * 2 and len(set(map(id, calls))) == 2


class Interrupted(Exception):
    pass


def test_resume_restores_model_optimizer_scheduler_step_and_data_order(tiny_cfg, tmp_path: Path, monkeypatch):
    cfg = tiny_cfg("model.dropout=0.1")  # dropout: the RNG state must be restored too
    straight = train_run(cfg, tmp_path / "straight")

    seen_batches: list[list[int]] = []
    original_iter = loop.StepBatches.__iter__

    def recording_iter(self):
        for batch in original_iter(self):
            seen_batches.append(batch)
            yield batch

    original_save = loop.save_last

    def save_then_die(path, state, trainee):
        original_save(path, state, trainee)
        if state.step == 10:
            raise Interrupted

    monkeypatch.setattr(loop.StepBatches, "__iter__", recording_iter)
    monkeypatch.setattr(loop, "save_last", save_then_die)
    with pytest.raises(Interrupted):
        train_run(cfg, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "records.jsonl").exists()
    state = checkpoint.load(tmp_path / "resumed" / "checkpoints" / checkpoint.LAST)
    assert state["run_state"]["step"] == 10 and state["scheduler"]["last_epoch"] == 10
    assert all(s["step"] == 10 for s in state["optimizer"]["state"].values())

    monkeypatch.setattr(loop, "save_last", original_save)
    resumed = train_run(cfg, tmp_path / "resumed")
    assert resumed["metrics"]["steps"] == 20
    first_run, second_run = seen_batches[:10], seen_batches[10:]
    uninterrupted = loop.StepBatches(cfg.task.generate.train, cfg.trainer.batch_size, cfg.seed, 0, 20)
    assert len(second_run) == 10 and first_run + second_run == list(uninterrupted)
    for key in ("test_accuracy", "val_accuracy", "train_loss"):
        assert resumed["metrics"][key] == straight["metrics"][key]
    # the learning curve survives the interruption: the validation before it comes from the checkpoint
    curve = ("step", "examples", "val_accuracy", "val_loss")
    assert [[entry[key] for key in curve] for entry in resumed["metrics"]["history"]] == \
        [[entry[key] for key in curve] for entry in straight["metrics"]["history"]]
    a = checkpoint.load(tmp_path / "straight" / "checkpoints" / checkpoint.LAST)
    b = checkpoint.load(tmp_path / "resumed" / "checkpoints" / checkpoint.LAST)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_resuming_with_another_config_is_refused(tiny_cfg, tmp_path: Path):
    train_run(tiny_cfg(), tmp_path / "run")
    with pytest.raises(LRAError, match="checkpoint of a different config"):
        train_run(tiny_cfg("model.dim=16"), tmp_path / "run")


def test_a_nan_loss_stops_the_run_as_diverged(tiny_cfg, tmp_path: Path):
    record = train_run(tiny_cfg("optimizer.lr=1e38", "optimizer.grad_clip=null"), tmp_path / "run")
    assert record["status"] == "diverged"
    assert "loss became nan" in record["error"]
    assert record["metrics"]["steps"] < 20
    assert read_records(tmp_path / "run" / "records.jsonl")[0]["status"] == "diverged"


def write_tsv(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("Source\tTarget\n" + "".join(r + "\n" for r in rows))


GOOD_ROW = "( ( ( [MAX 2 ) 9 ) ] )\t9"


@pytest.mark.parametrize(
    "train_rows, expected",
    [
        ([GOOD_ROW, "( ( [MIN 3 ) ] )"], "basic_train.tsv:3: "),
        ([GOOD_ROW, GOOD_ROW[:-1] + "12"], "basic_train.tsv:3: "),
    ],
)
def test_malformed_data_fails_with_file_and_line(train_rows, expected, tmp_path: Path):
    data = tmp_path / "data" / "listops-gen-128"
    for split, rows in [("train", train_rows), ("val", [GOOD_ROW]), ("test", [GOOD_ROW])]:
        write_tsv(data / f"basic_{split}.tsv", rows)
    result = run_main("runners.train", f"data.root={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("lra-train: error: ") and expected in line
    assert not (tmp_path / "run" / "records.jsonl").exists()


def test_missing_data_with_generation_disabled_fails_with_one_line(tmp_path: Path):
    """A user error inside the job, from a process of its own: exit status 2 and one line, nothing else."""
    result = run_cli(
        "runners.train", f"data.root={tmp_path / 'nowhere'}", "data.generate=false",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=REPO,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("lra-train: error: ") and "listops-gen-128" in line and "data.generate=false" in line
    assert not (tmp_path / "run" / "records.jsonl").exists()


def test_bf16_autocast_path_trains_like_fp32_on_the_cpu(tiny_cfg, tmp_path: Path):
    fp32 = train_run(tiny_cfg(), tmp_path / "fp32")
    bf16 = train_run(tiny_cfg("hardware.precision=bf16"), tmp_path / "bf16")
    assert bf16["status"] == "ok" and bf16["config"]["hardware"]["precision"] == "bf16"
    assert bf16["metrics"]["train_loss"] != fp32["metrics"]["train_loss"]  # autocast really ran
    assert bf16["metrics"]["train_loss"] == pytest.approx(fp32["metrics"]["train_loss"], abs=0.05)


def test_the_gpu_profile_says_when_cuda_is_missing(tmp_path: Path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_main("runners.train", "hardware=gpu", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip() == ("lra-train: error: hardware.device: hardware=gpu needs CUDA, "
                                     "which this torch build cannot see")
