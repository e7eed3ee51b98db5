"""Hand-made run records in the DESIGN.md schema, for the report and notebook tests.

Records are of schema 1 (no techniques, precision or compression fields, as older runs wrote them)
unless one of those fields is given; then of schema 2, with the others at their defaults. Training
runs with a validation history (`learned`) are of schema 4, the first to keep one.
"""

from __future__ import annotations

import json
from pathlib import Path


def record(kind: str, model: str, task: str, status: str, metrics: dict, *, techniques: list[str] | None = None,
           precision: str | None = None, compression: str | None = None, **fields) -> dict:
    """One record; `fields` override the top-level defaults (hardware cpu, seed 0, batch 32)."""
    schema_2 = {"schema": 2, "techniques": techniques or [], "precision": precision or "fp32",
                "compression": compression}
    given = techniques is not None or precision is not None or compression is not None
    return {
        "schema": 1, **(schema_2 if given else {}), "kind": kind, "model": model, "task": task, "hardware": "cpu",
        "seed": 0, "seq_len": 128,
        "batch_size": 32, "status": status, "error": None if status == "ok" else "boom", "metrics": metrics,
        "config": {"model": {"dim": 8}}, "config_hash": "0" * 16, "env": {"device": "cpu"}, "wall_s": 1.0, **fields,
    }


def train(model: str, task: str, accuracy: float | None, seed: int = 0, status: str = "ok", *,
          examples: int | None = None, majority: float | None = None, degenerate: bool | None = None,
          **fields) -> dict:
    """A training run; accuracy None for a run that did not finish (status diverged unless given).
    `examples` and `degenerate`: the test examples scored and the degenerate-predictor flag, which
    older records lack (left out unless given); `majority`: the majority-class rate (default 0.14
    on listops, else 0.5)."""
    if accuracy is None:
        return record("train", model, task, "diverged" if status == "ok" else status, {"steps": 5}, seed=seed, **fields)
    majority = (0.14 if task == "listops" else 0.5) if majority is None else majority
    metrics = {"test_accuracy": accuracy, "val_accuracy": accuracy, "test_majority_rate": majority,
               "steps": 10, "steps_per_s": 5.0, "tokens_per_s": 640.0, "peak_memory_mb": 3.0,
               "memory_measure": "live_tensor_bytes",
               **({} if examples is None else {"test_examples": examples}),
               **({} if degenerate is None else {"test_degenerate": degenerate})}
    return record("train", model, task, status, metrics, seed=seed, **fields)


def history(accuracies: list[float], every: int = 10, seconds: float = 2.0, batch_size: int = 32) -> list[dict]:
    """A validation history (lra.records.Validation): accuracy `accuracies[i]` after (i + 1) * `every`
    steps and (i + 1) * `seconds` seconds of training."""
    return [{"step": (i + 1) * every, "train_seconds": (i + 1) * seconds, "examples": (i + 1) * every * batch_size,
             "val_accuracy": accuracy, "val_loss": 1.0 - accuracy} for i, accuracy in enumerate(accuracies)]


def learned(model: str, task: str, accuracies: list[float], *, seq_len: int = 128, seed: int = 0,
            test: float | None = None, every: int = 10, seconds: float = 2.0, config: dict | None = None,
            **fields) -> dict:
    """A training run of schema 4 at `seq_len` (its config's task.max_len, merged into `config`), with the
    validation history of `accuracies` (see `history`), tested at `test` (default: its last validation
    accuracy) on 1000 examples (and validated on 1000), at 2 * seq_len tokens/s and seq_len / 64 MB; `fields` as `train` takes them."""
    run = train(model, task, accuracies[-1] if test is None else test, seed, examples=1000, seq_len=seq_len,
                **fields)
    run["metrics"].update(history=history(accuracies, every, seconds), val_examples=1000, test_loss=0.5,
                          tokens_per_s=2.0 * seq_len, peak_memory_mb=seq_len / 64)
    task_config = {**(config or {}).get("task", {}), "max_len": seq_len}
    return {**run, "schema": 4, "config": {"model": {"dim": 8}, **(config or {}), "task": task_config}}


def bench(model: str, seq_len: int, steps: float | None = None, memory: float | None = None, status: str = "ok",
          mode: str = "train", task: str = "text", techniques: list[str] | None = None, precision: str | None = None,
          **metrics) -> dict:
    """One bench measurement; a non-ok one carries only its mode, as lra-bench writes it."""
    fields = {"seq_len": seq_len, "techniques": techniques, "precision": precision}
    if status != "ok":
        return record("bench", model, task, status, {"mode": mode}, **fields)
    figures = {"mode": mode, "steps_per_s": steps, "tokens_per_s": steps * 32 * seq_len, "peak_memory_mb": memory,
               "memory_measure": "live_tensor_bytes", **metrics}
    return record("bench", model, task, status, figures, **fields)


def compress(model: str, task: str, compression: str | None, accuracy: float | None, *, steps: float = 40.0,
             memory: float = 2.0, weights: float = 1.0, sparsity: float = 0.0, finetune_steps: int = 20,
             seed: int = 0, status: str = "ok", techniques: list[str] | None = None, precision: str | None = None,
             **fields) -> dict:
    """One lra-compress measurement of a trained `model`: the float model as trained (compression
    None) or a compressed one (`int8`, `pruned 50%`: then fine-tuned for `finetune_steps`); a failed
    one (accuracy None) carries no metrics."""
    labels = {"techniques": techniques or [], "precision": precision or "fp32", "compression": compression}
    if accuracy is None:
        return record("compress", model, task, "failed" if status == "ok" else status, {}, seed=seed, **labels,
                      **fields)
    metrics = {"test_accuracy": accuracy, "val_accuracy": accuracy, "test_majority_rate": 0.14 if task == "listops"
               else 0.5, "infer_steps_per_s": steps, "infer_tokens_per_s": steps * 32 * 128,
               "infer_peak_memory_mb": memory, "memory_measure": "live_tensor_bytes", "weights_mb": weights,
               "sparsity": sparsity, "prediction_agreement": 1.0 if compression is None else 0.95,
               **({"finetune_steps": finetune_steps} if str(compression).startswith("pruned") else {})}
    return record("compress", model, task, status, metrics, seed=seed, **labels, **fields)


def write(directory: Path, *records: dict) -> Path:
    """Write `records` as directory/records.jsonl."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return directory


def curve_runs(runs: Path) -> Path:
    """A sweep of lengths with learning curves: fused attention (two seeds at 256 tokens) and linear
    attention on the text task at 64, 128 and 256 tokens, and a training run of an older schema,
    without a history."""
    for length in (64, 128, 256):
        write(runs / "full-sdpa" / str(length), learned("full-sdpa", "text", [0.5, 0.75, 0.875, 0.9], seq_len=length),
              *([learned("full-sdpa", "text", [0.5, 0.625, 0.8, 0.85], seq_len=length, seed=1, seconds=3.0)]
                if length == 256 else []))
        write(runs / "linear" / str(length), learned("linear", "text", [0.5, 0.5, 0.625, 0.7], seq_len=length))
    write(runs / "older", train("local", "text", 0.6))
    return runs


def sample_runs(runs: Path) -> Path:
    """A small sweep of each kind: three models trained on two tasks, fused attention also with
    reversible layers on ListOps, a bench of four models at three lengths in which plain full
    attention runs out of memory at the longest, and lra-compress of fused attention on ListOps."""
    write(runs / "train" / "a", train("full-math", "listops", 0.40), train("full-math", "text", 0.60))
    write(runs / "train" / "b", train("full-sdpa", "listops", 0.41), train("full-sdpa", "text", 0.62))
    write(runs / "train" / "c", train("linformer", "listops", 0.30), train("linformer", "text", 0.55))
    write(runs / "techniques" / "a", train("full-sdpa", "listops", 0.43, techniques=["reversible"]))
    write(runs / "compress" / "b", compress("full-sdpa", "listops", None, 0.41),
          compress("full-sdpa", "listops", "int8", 0.40, steps=60.0, memory=1.0, weights=0.25),
          compress("full-sdpa", "listops", "pruned 50%", 0.38, sparsity=0.5))
    write(runs / "bench", *[
        bench(model, length, steps=speed / length, memory=length * size, matmul_tflops=0.5,
              **({"tflops": 0.1} if model.startswith("full") else {}))
        for model, speed, size in [("full-math", 4e3, 1.0), ("full-sdpa", 8e3, 0.5), ("linformer", 6e3, 0.2),
                                   ("local", 9e3, 0.3)]
        for length in (1024, 2048, 4096) if not (model == "full-math" and length == 4096)
    ], bench("full-math", 4096, status="oom"))
    return runs
