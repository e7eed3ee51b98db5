"""Post-training compression of a trained model, measured beside the float model it came from
(lra-compress), on the CPU, where torch.ao's dynamic quantization runs:

- the float model the run tested (its best checkpoint, or its final weights; compression null): the reference;
- "int8": dynamic int8 quantization of the linear layers (weights int8, activations quantized on
  the fly); the linear layers inside attention modules stay float (some variants read their
  weights as tensors, and they are a small share of the work);
- "pruned 50%" (one per sparsity): global magnitude pruning of the same layers' weights, the
  smallest |w| over all of them zeroed until exactly that fraction is zero, then `finetune_steps`
  training steps with the zeros kept.

The figures of each: test and validation accuracy, the agreement of its test predictions with the
float model's, inference speed and peak memory (live tensor bytes) of one forward at the task's
length, the serialized size of its weights, and the fraction of zeros among the compressed layers'
weights (of an int8 model: the weights that quantized to zero).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.ao.quantization import quantize_dynamic
from torch.nn.utils import prune
from torch.utils.data import DataLoader
from tqdm import tqdm

from lra import checkpoint
from lra.config import CompressConfig, check_ranges, hashed
from lra.engine.benchmark import Outcome
from lra.engine.evaluation import evaluate, predict, scored
from lra.engine.finished import trained_config, trained_record
from lra.engine.inputs import inputs
from lra.engine.step import Trainee, train_step
from lra.errors import LRAError, one_line
from lra.measure import is_out_of_memory, median_seconds, peak_memory
from lra.optim import build_optimizer
from models.attention import Attention
from tasks.batching import StepBatches, TaskData, pad_batch

log = logging.getLogger("lra.compress")
CPU = torch.device("cpu")


def check_settings(settings: DictConfig) -> None:
    """Fail at once, naming the key, on settings no job could satisfy: a value out of its range
    (lra.config), or two sparsities that would share a record's name."""
    check_ranges(settings)
    names = [pruned_name(s) for s in settings.sparsities]
    if len(set(names)) < len(names):
        raise LRAError(f"sparsities: two levels share a record's name ({', '.join(names)}); "
                       "they must differ by at least a percent")


def pruned_name(level: float) -> str:
    """The `compression` of a record of a model pruned to `level`."""
    return f"pruned {level:.0%}"


def job_config(settings: DictConfig) -> DictConfig:
    """The trained run's config, on the CPU in fp32, with this job's settings (those that change
    the figures: CompressConfig's hashed fields) as `compress`."""
    check_settings(settings)
    cfg = trained_config(trained_record(Path(settings.run), "run"))
    cfg.hardware.device, cfg.hardware.precision = "cpu", "fp32"
    cfg.compress = OmegaConf.masked_copy(settings, [item.name for item in dataclasses.fields(CompressConfig)
                                                     if hashed(item)])
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
    predicted, labels, loss = predict(model, data.test, cfg, CPU)
    batch = cfg.compress.batch_size
    tokens, mask, _ = inputs(cfg, cfg.task.max_len, batch, CPU)
    with torch.no_grad():
        model(tokens, mask)  # warm-up
        with peak_memory(CPU) as memory:
            model(tokens, mask)
        seconds = median_seconds(lambda: model(tokens, mask), min_run_time=cfg.compress.min_run_time)
    metrics = {
        **scored("test", predicted, labels, loss, cfg, CPU),
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


def outcome(cfg: DictConfig, compression: str | None, make: Callable[[], nn.Module], facts: dict[str, Any],
            reference: torch.Tensor | None, layers: list[str], data: TaskData) -> Outcome:
    """The figures of the model `make` builds (`compression`), with `facts` among them; one that
    breaks (or runs out of memory) is a result."""
    torch.manual_seed(cfg.seed)  # fine-tuning and inputs alike whichever models were measured before (a resume)
    try:
        return Outcome("ok", {**measured(make(), reference, layers, data, cfg), **facts})
    except Exception as exception:
        status = "oom" if is_out_of_memory(exception) else "failed"
        error = one_line(f"{type(exception).__name__}: {exception}")
        log.error("%s: %s", compression or "float model", error, exc_info=status == "failed")
        return Outcome(status, {}, error)
