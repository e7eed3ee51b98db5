"""lra-compress: post-training compression of one finished lra-train run, measured beside the
float model it came from.

    lra-compress run=results/runs/train/<run> [quantize=true] [sparsities=[0.5,0.8,0.9]]   (-m to sweep runs)

The records go to <run>/compress/records.jsonl (hydra.run.dir), where lra-report finds them beside
the run's own. One record (kind "compress") per model measured, in one job on the CPU, where
torch.ao's dynamic quantization runs, so that every figure is compared on one device:

- the float model of the run's best checkpoint (compression null): the reference;
- "int8": dynamic int8 quantization of the linear layers (weights int8, activations quantized on
  the fly); the linear layers inside attention modules stay float (some variants read their
  weights as tensors, and they are a small share of the work);
- "pruned 50%" (one per sparsity): global magnitude pruning of the same layers' weights, the
  smallest |w| over all of them zeroed until exactly that fraction is zero, then `finetune_steps`
  training steps with the zeros kept.

Each record carries test and validation accuracy, the agreement of its test predictions with the
float model's, inference speed and peak memory (live tensor bytes) of one forward at the task's
length, the serialized size of its weights, and the fraction of zeros among the compressed layers'
weights (of an int8 model: the weights that quantized to zero).
"""

from __future__ import annotations

import copy
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.ao.quantization import quantize_dynamic
from torch.nn.utils import prune
from torch.utils.data import DataLoader
from tqdm import tqdm

from lra import checkpoint
from lra.cli import USER_ERRORS, describe, reported, run
from lra.config import CONF_DIR
from lra.errors import LRAError, one_line
from lra.jobs import run_job
from lra.measure import is_out_of_memory, median_seconds, peak_memory
from lra.optim import build_optimizer
from lra.records import make_record, write_records
from models.attention import Attention
from runners.bench import inputs
from runners.train import Trainee, evaluate, predict, scored, setup_device, train_step
from runners.trained import trained_config, trained_model, trained_record
from tasks import load_task
from tasks.batching import StepBatches, TaskData, pad_batch

PROG = "lra-compress"
log = logging.getLogger("lra.compress")
CPU = torch.device("cpu")
# What the records' config holds of this job's settings (what changes the figures).
SETTINGS = ("run", "quantize", "sparsities", "finetune_steps", "finetune_lr", "batch_size", "min_run_time")


def check_settings(settings: DictConfig) -> None:
    """Fail at once, naming the key, on settings no job could satisfy."""
    bad = [s for s in settings.sparsities if not 0 <= s < 1]
    if bad:
        raise LRAError(f"sparsities: each must be in [0, 1), got {bad}")
    names = [pruned_name(s) for s in settings.sparsities]
    if len(set(names)) < len(names):
        raise LRAError(f"sparsities: two levels share a record's name ({', '.join(names)}); "
                       "they must differ by at least a percent")
    for key, ok, need in [("finetune_steps", settings.finetune_steps >= 0, "at least 0"),
                          ("finetune_lr", settings.finetune_lr > 0, "positive"),
                          ("batch_size", settings.batch_size >= 1, "at least 1"),
                          ("min_run_time", settings.min_run_time > 0, "positive")]:
        if not ok:
            raise LRAError(f"{key}: must be {need}, got {settings[key]}")


def pruned_name(level: float) -> str:
    """The `compression` of a record of a model pruned to `level`."""
    return f"pruned {level:.0%}"


def job_config(settings: DictConfig) -> DictConfig:
    """The trained run's config, on the CPU in fp32, with this job's settings as `compress`."""
    check_settings(settings)
    cfg = trained_config(trained_record(Path(settings.run), "run"))
    cfg.hardware.device, cfg.hardware.precision = "cpu", "fp32"
    cfg.compress = OmegaConf.masked_copy(settings, list(SETTINGS))
    cfg.force = settings.force
    return cfg


def compressed_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers compression acts on, by name: every one outside the attention modules."""
    inside = [name for name, module in model.named_modules() if isinstance(module, Attention)]
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not any(name.startswith(f"{prefix}.") for prefix in inside)}


def quantized(model: nn.Module) -> nn.Module:
    """A copy of `model` with its compressed layers dynamically quantized to int8."""
    with warnings.catch_warnings():  # torch's notices that eager quantization and quantized tensors are deprecated
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor, torch.quantize_per_channel", UserWarning)
        return quantize_dynamic(model, set(compressed_layers(model)), dtype=torch.qint8, inplace=False)


def prune_globally(model: nn.Module, sparsity: float) -> None:
    """Zero the `sparsity` fraction of smallest-magnitude weights over all compressed layers; the
    zeros are kept (a mask) until `make_permanent`."""
    targets = [(layer, "weight") for layer in compressed_layers(model).values()]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)


def make_permanent(model: nn.Module) -> None:
    for layer in compressed_layers(model).values():
        if prune.is_pruned(layer):
            prune.remove(layer, "weight")


def sparsity(model: nn.Module, names: list[str] | None = None) -> float:
    """The fraction of exactly zero weights over the layers `names` (default: the compressed
    layers); of an int8 layer, the weights that quantized to zero."""
    modules = dict(model.named_modules())
    layers = [modules[name] for name in names] if names is not None else compressed_layers(model).values()
    weights = [layer.weight() if callable(layer.weight) else layer.weight for layer in layers]  # int8: a method
    weights = [w.int_repr() if w.is_quantized else w for w in weights]
    return sum(int(w.eq(0).sum()) for w in weights) / sum(w.numel() for w in weights)


def fine_tune(model: nn.Module, data: TaskData, cfg: DictConfig, progress: bool) -> None:
    """`compress.finetune_steps` training steps at `compress.finetune_lr` (constant), in the
    run's data order from its first step."""
    steps = cfg.compress.finetune_steps
    optimizer = build_optimizer(model, OmegaConf.merge(cfg.optimizer, {"lr": cfg.compress.finetune_lr}))
    trainee = Trainee(model=model, forward=model, optimizer=optimizer,
                      scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    batches = StepBatches(len(data.train), cfg.trainer.batch_size, cfg.seed, 0, steps)
    loader = DataLoader(data.train, batch_sampler=batches, collate_fn=pad_batch,
                        generator=torch.Generator().manual_seed(cfg.seed))
    for batch in tqdm(loader, total=steps, desc="fine-tuning", disable=None if progress else True, leave=False):
        train_step(trainee, batch, cfg, CPU)


def pruned(model: nn.Module, level: float, data: TaskData, cfg: DictConfig, progress: bool) -> nn.Module:
    """A copy of `model` pruned to `level` and fine-tuned with its zeros kept."""
    model = copy.deepcopy(model)
    prune_globally(model, level)
    fine_tune(model, data, cfg, progress)
    make_permanent(model)
    return model.eval()


def measured(model: nn.Module, reference: torch.Tensor | None, layers: list[str], data: TaskData,
             cfg: DictConfig) -> dict[str, Any]:
    """Accuracy, agreement with the float model's predictions (`reference`; None: this is it),
    speed, memory and size of `model`, and the sparsity of its `layers`."""
    predicted, labels = predict(model, data.test, cfg, CPU)
    batch = cfg.compress.batch_size
    tokens, mask, _ = inputs(cfg, cfg.task.max_len, batch, CPU)
    with torch.no_grad():
        model(tokens, mask)  # warm-up
        with peak_memory(CPU) as memory:
            model(tokens, mask)
        seconds = median_seconds(lambda: model(tokens, mask), min_run_time=cfg.compress.min_run_time, warmup=False)
    metrics = {
        **scored("test", predicted, labels, cfg, CPU),
        **evaluate(model, data.val, cfg, CPU, "val"),
        "prediction_agreement": 1.0 if reference is None else float((predicted == reference).float().mean()),
        "infer_steps_per_s": 1 / seconds,
        "infer_tokens_per_s": batch * tokens[0].numel() / seconds,
        "infer_peak_memory_mb": memory.mb,
        "memory_measure": memory.measure,
        "weights_mb": checkpoint.saved_mb(model.state_dict()),
        "sparsity": sparsity(model, layers),
    }
    return metrics


Compressor = Callable[[nn.Module], nn.Module]


def compressions(cfg: DictConfig, data: TaskData | None = None,
                 progress: bool = False) -> dict[str | None, tuple[Compressor, dict[str, Any]]]:
    """Every model the job measures, by its record's `compression`, in order: how it is made from
    the float model, and what its record says of that (`data`: the task's, for fine-tuning; only
    the names are needed without it)."""
    jobs: dict[str | None, tuple[Compressor, dict[str, Any]]] = {None: (lambda model: model, {})}
    if cfg.compress.quantize:
        jobs["int8"] = (quantized, {})
    for level in cfg.compress.sparsities:
        jobs[pruned_name(level)] = (lambda model, level=level: pruned(model, level, data, cfg, progress),
                                    {"finetune_steps": cfg.compress.finetune_steps})
    return jobs


def compress(cfg: DictConfig, out: Path, progress: bool, previous: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Measure the float model and each compression of it; write and return the records, after
    every one. `previous` records of this config (an interrupted job's) are kept unless failed."""
    setup_device(cfg.hardware)
    data = load_task(cfg.task, cfg.data, progress=progress)
    model = trained_model(Path(cfg.compress.run), cfg, "run")
    reference = predict(model, data.test, cfg, CPU)[0]
    layers = list(compressed_layers(model))
    kept = {r["compression"]: r for r in previous if r["status"] != "failed"}
    records: list[dict[str, Any]] = []
    bar = tqdm(compressions(cfg, data, progress).items(), desc=f"compressing {cfg.model.name}",
               disable=None if progress else True)
    for compression, (compressor, facts) in bar:
        bar.set_postfix(model=compression or "float")
        if compression not in kept:
            kept[compression] = compressed_record(
                cfg, compression, lambda: compressor(model), facts, None if compression is None else reference, layers,
                data,
            )
        records.append(kept[compression])
        write_records(out, records)  # after every model: a crash loses nothing measured
    return records


def compressed_record(cfg: DictConfig, compression: str | None, make: Callable[[], nn.Module], facts: dict[str, Any],
                      reference: torch.Tensor | None, layers: list[str], data: TaskData) -> dict[str, Any]:
    """The record of the model `make` builds, with `facts` among its metrics; one that breaks (or
    runs out of memory) is a result."""
    started = time.perf_counter()
    status, error, metrics = "ok", None, {}
    torch.manual_seed(cfg.seed)  # fine-tuning and inputs alike whichever models were measured before (a resume)
    try:
        metrics = {**measured(make(), reference, layers, data, cfg), **facts}
    except Exception as exception:
        status = "oom" if is_out_of_memory(exception) else "failed"
        error = one_line(f"{type(exception).__name__}: {exception}")
        log.error("%s: %s", compression or "float model", error, exc_info=status == "failed")
    return make_record(cfg, kind="compress", status=status, error=error, metrics=metrics, seq_len=cfg.task.max_len,
                       batch_size=cfg.compress.batch_size, device=CPU, wall_s=time.perf_counter() - started,
                       compression=compression)


def failed_records(cfg: DictConfig, status: str, error: str) -> list[dict[str, Any]]:
    """The records of a job that raised: one per compression, each with the job's error."""
    return [make_record(cfg, kind="compress", status=status, error=error, metrics={}, seq_len=cfg.task.max_len,
                        batch_size=cfg.compress.batch_size, device=CPU, wall_s=0.0, compression=compression)
            for compression in compressions(cfg)]


class CheckRun(Callback):
    """A single run's input checked before Hydra creates its directory (by default inside `run`):
    bad settings, or a `run` that is not a finished lra-train run, end in one line, nothing written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with reported(PROG):  # exits (SystemExit): Hydra turns an Exception from a callback into a warning
            check_settings(config)
            trained_record(Path(config.run), "run")


@hydra.main(config_path=str(CONF_DIR), config_name="compress", version_base="1.3")
def main(settings: DictConfig) -> None:
    """One job: skipped when its directory holds this config's finished records, resumed at the
    first compression it has no record of. In a sweep, a job whose input is bad logs why and
    writes nothing (the sweep's summary counts it as failed); the others go on."""
    hydra_cfg = HydraConfig.get()
    out = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode is RunMode.MULTIRUN
    with reported(PROG):
        try:
            cfg = job_config(settings)
        except USER_ERRORS as error:
            if not sweep:
                raise
            log.error("job not run: %s", describe(error))
            return
        records = run_job(
            cfg, out, expected=len(compressions(cfg)),
            work=lambda previous: compress(cfg, out, settings.progress, previous),
            failure=lambda status, error: failed_records(cfg, status, error), isolate=sweep,
        )
    if any(r["status"] == "failed" for r in records) and not sweep:
        sys.exit(1)


def cli() -> None:
    run(main, PROG)


if __name__ == "__main__":
    cli()
