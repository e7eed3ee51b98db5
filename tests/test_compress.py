"""lra-compress: int8 quantization within a stated tolerance of the float model, pruning to an exact
sparsity, and a whole job on a tiny trained run (records, resume, skip, force, bad input)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from torch import nn

from lra.engine.compression import (
    check_settings, compressed_layers, job_config, make_permanent, prune_globally, pruned, quantized, sparsity,
)
from lra.engine.finished import trained_config, trained_model, trained_record
from lra.errors import LRAError
from lra.records import read_records, write_records
from models.attention import list_attention
from models.encoder import Classifier
from runners.compress import compress
from runners.train import train_run
from tasks import load_task
from tests.conftest import REPO, TINY, compose_config, run_cli, run_main
from tests.report_fixtures import bench

# Relative L2 error of the logits, int8 against fp32 (torch 2.13, CPU). Measured on the tiny models
# below (seed 0): 1.2-2.2% over every attention variant (linformer the largest); over seeds 0-9 at
# most 3.3% (sinkhorn); a ListOps model trained 60 steps 1.2%, its test predictions all unchanged.
# Per-tensor int8 weights and activations give errors of this order; 4% leaves room for the seed.
INT8_TOLERANCE = 0.04
METRICS = {"test_accuracy", "val_accuracy", "test_majority_rate", "prediction_agreement", "infer_steps_per_s",
           "infer_tokens_per_s", "infer_peak_memory_mb", "memory_measure", "weights_mb", "sparsity"}
# lra-compress settings of a job of seconds on the tiny run
QUICK = ["sparsities=[0.5,0.9]", "finetune_steps=3", "batch_size=4", "min_run_time=0.05", "progress=false"]


@pytest.fixture(autouse=True)
def threads():
    """In-process jobs set torch's thread count from the run's config; the next test gets it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny finished lra-train run (one thread: quick on a busy machine) and its record."""
    root = tmp_path_factory.mktemp("trained")
    before = torch.get_num_threads()
    record = train_run(compose_config(*TINY, f"data.root={root / 'data'}", "hardware.threads=1"), root / "run")
    torch.set_num_threads(before)
    return root / "run", record


def tiny(name: str = "full", *overrides: str) -> Classifier:
    cfg = compose_config("experiment=smoke", f"model={name}", *overrides)
    torch.manual_seed(0)
    return Classifier(cfg.model, 18, 10, 48).eval()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def zeros_and_weights(model: nn.Module) -> tuple[int, int]:
    weights = [layer.weight for layer in compressed_layers(model).values()]
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


@pytest.mark.parametrize("name", list_attention())
def test_int8_outputs_stay_within_the_tolerance_of_the_float_model(name):
    model = tiny(name)
    int8 = quantized(model)
    tokens, mask = torch.randint(18, (16, 48)), torch.ones(16, 48, dtype=torch.bool)
    with torch.no_grad():
        error = relative_error(int8(tokens, mask), model(tokens, mask))
    assert 0 < error < INT8_TOLERANCE, error
    # the projections, MLPs and head became int8 layers; the attention modules' own stay float
    layers = dict(int8.named_modules())
    assert compressed_layers(model) and all(
        isinstance(layers[n], torch.ao.nn.quantized.dynamic.Linear) for n in compressed_layers(model))
    assert not compressed_layers(int8)
    inside = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)} - set(compressed_layers(model))
    assert all(type(layers[n]) is nn.Linear for n in inside)
    assert all(type(m) is nn.Linear for m in compressed_layers(model).values())  # the float model is untouched


@pytest.mark.parametrize(("name", "override", "reads"), [
    ("sinkhorn", "seed=0", "attn.sort_net"), ("synthesizer", "model.attention.mode=dense", "attn.to_keys"),
])
def test_the_linear_layers_attention_reads_as_tensors_stay_float(name, override, reads):
    model = tiny(name, override)
    inside = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)} - set(compressed_layers(model))
    assert any(n.endswith(reads) for n in inside), inside
    int8 = quantized(model)  # would fail, reading the weight of a quantized layer as a tensor
    tokens, mask = torch.randint(18, (4, 48)), torch.ones(4, 48, dtype=torch.bool)
    with torch.no_grad():
        assert relative_error(int8(tokens, mask), model(tokens, mask)) < INT8_TOLERANCE
    assert all(type(dict(int8.named_modules())[n]) is nn.Linear for n in inside)


@pytest.mark.parametrize("level", [0.5, 0.8, 0.37])
def test_pruning_reaches_the_target_sparsity_exactly(level):
    model = tiny()
    _, weights = zeros_and_weights(model)
    prune_globally(model, level)
    assert zeros_and_weights(model) == (round(level * weights), weights)
    make_permanent(model)
    assert zeros_and_weights(model)[0] == round(level * weights) and sparsity(model) == round(level * weights) / weights
    assert not any(name.endswith("_orig") for name, _ in model.named_parameters())
    # the smallest magnitudes went, over all layers together: every survivor is at least as large
    kept = torch.cat([layer.weight[layer.weight != 0].abs() for layer in compressed_layers(model).values()])
    original = torch.cat([layer.weight.flatten().abs() for layer in compressed_layers(tiny()).values()])
    assert kept.min() >= original.kthvalue(round(level * weights)).values
    # biases, norms, embeddings and the attention's own layers untouched
    pruned_names = {f"{name}.weight" for name in compressed_layers(model)}
    untouched = {n: p for n, p in tiny().named_parameters() if n not in pruned_names}
    assert untouched and all(torch.equal(p, dict(model.named_parameters())[n]) for n, p in untouched.items())


def test_fine_tuning_after_pruning_keeps_the_zeros_and_moves_the_rest(trained_run):
    cfg = trained_config(trained_record(trained_run[0], "run"))  # its task, data and optimizer
    with open_dict(cfg):
        cfg.compress = {"finetune_steps": 5, "finetune_lr": 1e-3}
    data = load_task(cfg.task, cfg.data, progress=False)
    model = tiny()
    before = copy.deepcopy(model)
    prune_globally(before, 0.5)
    make_permanent(before)
    after = pruned(model, 0.5, data, cfg, progress=False)
    zeros, weights = zeros_and_weights(after)
    assert zeros == round(0.5 * weights)
    moved = 0
    for name, layer in compressed_layers(after).items():
        was = compressed_layers(before)[name].weight
        assert torch.equal(layer.weight == 0, was == 0)  # the same weights are zero
        moved += int((layer.weight != was).sum())
    assert moved > 0.9 * (weights - zeros)  # nearly every survivor was trained
    assert all(type(m) is nn.Linear and not hasattr(m, "weight_orig") for m in compressed_layers(model).values())


def compress_cli(*args: str):
    """lra-compress's entry point, run in this process (conftest.run_main)."""
    return run_main("runners.compress", *args)


def test_a_compress_job_measures_every_model_skips_when_done_and_reruns_with_force(trained_run):
    run, trained = trained_run
    pruned_weights = zeros_and_weights(trained_model(run, trained_config(trained_record(run, "run")), "run"))[1]
    args = [f"run={run}", *QUICK]
    done = compress_cli(*args)
    assert done.returncode == 0, done.stderr
    path = run / "compress" / "records.jsonl"  # the default: inside the trained run
    records = read_records(path)
    assert [r["compression"] for r in records] == [None, "int8", "pruned 50%", "pruned 90%"]
    for record in records:
        assert (record["kind"], record["status"]) == ("compress", "ok")
        assert (record["model"], record["task"]) == ("full-sdpa", "listops")
        assert record["techniques"] == [] and record["precision"] == "fp32"
        assert (record["seq_len"], record["batch_size"]) == (48, 4)
        config = record["config"]
        assert config["hardware"]["device"] == "cpu" and config["model"] == trained["config"]["model"]
        assert set(config["compress"]) == {"run", "quantize", "sparsities", "finetune_steps", "finetune_lr",
                                          "batch_size", "min_run_time"}
        assert config["compress"]["sparsities"] == [0.5, 0.9]
        metrics = record["metrics"]
        assert METRICS <= set(metrics) and metrics["memory_measure"] == "live_tensor_bytes"
        assert 0 <= metrics["test_accuracy"] <= 1 and 0 <= metrics["prediction_agreement"] <= 1
        assert metrics["test_majority_rate"] == trained["metrics"]["test_majority_rate"]
        assert metrics["infer_peak_memory_mb"] > 0 and metrics["weights_mb"] > 0
        assert metrics["infer_tokens_per_s"] == pytest.approx(metrics["infer_steps_per_s"] * 4 * 48)
    float_metrics, int8, half, most = (r["metrics"] for r in records)
    assert float_metrics["test_accuracy"] == trained["metrics"]["test_accuracy"]  # the run's best checkpoint
    assert float_metrics["prediction_agreement"] == 1.0 and float_metrics["sparsity"] == 0.0
    assert int8["prediction_agreement"] > 0.8 and int8["weights_mb"] < 0.5 * float_metrics["weights_mb"]
    assert int8["sparsity"] < 0.05 and "finetune_steps" not in int8  # weights that quantized to zero
    assert half["sparsity"] == round(0.5 * pruned_weights) / pruned_weights
    assert most["sparsity"] == round(0.9 * pruned_weights) / pruned_weights
    assert half["finetune_steps"] == most["finetune_steps"] == 3

    marked = copy.deepcopy(records)
    marked[1]["metrics"]["weights_mb"] = -1.0  # a mark: a skipped job leaves it, a forced one measures again
    write_records(path.parent, marked)
    skipped = compress_cli(*args)
    assert skipped.returncode == 0 and "already finished" in skipped.stdout + skipped.stderr
    assert read_records(path) == marked
    forced = compress_cli(*args, "force=true")
    assert forced.returncode == 0, forced.stderr
    assert "already finished" not in forced.stdout + forced.stderr
    rerun = read_records(path)
    assert [r["compression"] for r in rerun] == [None, "int8", "pruned 50%", "pruned 90%"]
    assert rerun[1]["metrics"]["weights_mb"] == int8["weights_mb"]
    assert rerun[0]["config_hash"] == records[0]["config_hash"]  # force is not part of the config


def test_an_interrupted_job_keeps_its_records_and_measures_the_rest_alike(trained_run, tmp_path: Path):
    cfg = job_config(compose_config(f"run={trained_run[0]}", *QUICK, config="compress"))
    out = tmp_path / "compress"
    out.mkdir()
    records = compress(cfg, out, progress=False)
    assert read_records(out / "records.jsonl") == json.loads(json.dumps(records))  # written as measured
    kept = copy.deepcopy(records[:2])  # as if killed after int8; a failed record is measured again
    kept[0]["metrics"]["weights_mb"] = -1.0
    kept[1]["status"] = "failed"
    resumed = compress(cfg, out, progress=False, previous=kept)
    assert resumed[0] == kept[0] and resumed[1]["status"] == "ok"
    assert [r["compression"] for r in resumed] == [None, "int8", "pruned 50%", "pruned 90%"]
    for first, again in zip(records[1:], resumed[1:]):  # each model seeded alike, whatever ran before it
        for key in ("test_accuracy", "val_accuracy", "prediction_agreement", "sparsity", "weights_mb"):
            assert first["metrics"][key] == again["metrics"][key], key


def test_a_sweep_measures_each_run_and_a_bad_one_writes_nothing(trained_run, tmp_path: Path):
    (tmp_path / "bad").mkdir()
    done = compress_cli("-m", f"run={trained_run[0]},{tmp_path / 'bad'}", "quantize=false", "sparsities=[]",
                        "batch_size=4", "min_run_time=0.05", "progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                        "hydra.callbacks.sweep.report=false")
    assert done.returncode == 1  # the sweep went on past the bad job, and says it failed
    output = done.stdout + done.stderr
    assert f"job not run: run: {tmp_path / 'bad'} is not an lra-train run directory" in output
    assert "sweep of 2 jobs, 1 records: 1 ok" in output and "1 jobs wrote no records" in output
    [records] = [read_records(path) for path in (tmp_path / "sweep").rglob("records.jsonl")]
    assert [(r["compression"], r["status"]) for r in records] == [(None, "ok")]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sparsities=[0.5,1.0]", "sparsities[1]=1.0: must be in [0, 1)"),
        ("sparsities=[-0.1]", "sparsities[0]=-0.1: must be in [0, 1)"),
        ("sparsities=[0.5,0.501]", "sparsities: two levels share a record's name (pruned 50%, pruned 50%)"),
        ("finetune_steps=-1", "finetune_steps=-1: must be at least 0"),
        ("batch_size=0", "batch_size=0: must be at least 1"),
        ("finetune_lr=0", "finetune_lr=0.0: must be greater than 0"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(override, message):
    with pytest.raises(LRAError) as error:
        check_settings(compose_config("run=x", override, config="compress"))
    assert str(error.value).startswith(message)


def test_bad_input_is_one_line_naming_the_key_and_writes_nothing(tmp_path: Path):
    def error_line(done) -> str:
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line.startswith("lra-compress: error: ")
        return line.removeprefix("lra-compress: error: ")

    not_a_run = run_cli("runners.compress", f"run={tmp_path}", cwd=REPO)  # as a user sees it: a process of its own
    assert error_line(not_a_run) == f"run: {tmp_path} is not an lra-train run directory (no records.jsonl)"
    assert not_a_run.stdout == ""
    (tmp_path / "records.jsonl").write_text(json.dumps(bench("full-sdpa", 128, steps=10.0, memory=5.0)) + "\n")
    assert error_line(compress_cli(f"run={tmp_path}", "batch_size=0")) == "batch_size=0: must be at least 1"
    # the default run directory is inside `run`: not even it was made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records.jsonl"]
    with pytest.raises(LRAError, match=f"^run: {tmp_path / 'records.jsonl'} holds no lra-train record$"):
        job_config(compose_config(f"run={tmp_path}", config="compress"))
