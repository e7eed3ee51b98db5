"""Batch lengths rounded up (hardware.pad_multiple): what it pads, that it changes no result, and
that a compiled model then compiles once instead of on almost every batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch._dynamo
from torch.utils.data import DataLoader

from lra.engine.evaluation import predict
from lra.engine.inputs import loader_options, pad_multiple
from lra.engine.step import Trainee, train_step
from lra.engine.training import check_train_config
from lra.errors import LRAError
from lra.optim import build_optimizer
from models.encoder import Classifier
from tasks import load_task, task_config
from tasks.batching import StepBatches, pad_batch, padded_length

CPU = torch.device("cpu")
STEPS = 30  # ListOps batches of 4 (smoke: 7-47 tokens, max_len 48): about 18 distinct longest lengths


def test_lengths_round_up_to_the_multiple_but_never_past_the_limit():
    assert [padded_length(n, 16, 48) for n in (1, 16, 17, 33, 47, 48)] == [16, 16, 32, 48, 48, 48]
    assert padded_length(45, 32, 48) == 48  # 64 would pass the model's max_len
    assert padded_length(7, 1) == 7 and padded_length(7, 48, 48) == 48


def test_rounded_up_batches_mask_exactly_the_real_tokens():
    tokens, mask, labels = pad_batch([((torch.tensor([5, 6, 7]),), 1), ((torch.tensor([8]),), 2)], multiple=4)
    assert tokens.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False]]
    # every sequence fills the rounded length: nothing is padded, no mask
    _, mask, _ = pad_batch([((torch.tensor([5, 6, 7, 8]),), 1), ((torch.tensor([1, 2, 3, 4]),), 0)], multiple=4)
    assert mask is None
    tokens, mask, _ = pad_batch([((torch.tensor([1, 2]), torch.tensor([3])), 0)], multiple=8, limit=6)
    assert tokens.shape == mask.shape == (1, 2, 6) and mask.sum(-1).tolist() == [[2, 1]]


def test_the_default_pads_a_compiled_model_to_max_len_and_nothing_else(tiny_cfg):
    assert pad_multiple(tiny_cfg()) == 1
    assert pad_multiple(tiny_cfg("hardware.compile=true")) == 48  # task.max_len
    assert pad_multiple(tiny_cfg("hardware.compile=true", "hardware.pad_multiple=16")) == 16
    with pytest.raises(LRAError, match="hardware.pad_multiple=0: must be at least 1, or null"):
        check_train_config(tiny_cfg("hardware.pad_multiple=0"))


def test_loaders_pin_memory_for_a_cuda_device_only(tiny_cfg):
    cfg = tiny_cfg("hardware.compile=true")
    assert loader_options(cfg, torch.device("cuda"))["pin_memory"] is True
    assert loader_options(cfg, CPU)["pin_memory"] is False
    assert loader_options(cfg, CPU)["collate_fn"].keywords == {"multiple": 48, "limit": 48}


@pytest.mark.parametrize("model", ["full", "local", "lsh", "nystrom", "linformer"])
def test_padding_to_max_len_changes_no_prediction(tiny_cfg, model: str):
    """The same model's logits over the validation split, batches padded to their longest and to max_len."""
    cfg = tiny_cfg(f"model={model}")
    data = load_task(cfg.task, cfg.data, progress=False)
    task = task_config(cfg.task)
    classifier = Classifier(cfg.model, task.vocab_size, task.num_classes, task.max_len)
    longest = predict(classifier, data.val, cfg, CPU)
    padded = predict(classifier, data.val, tiny_cfg(f"model={model}", f"hardware.pad_multiple={task.max_len}"), CPU)
    assert torch.equal(longest[0], padded[0]) and torch.equal(longest[1], padded[1])
    assert padded[2] == pytest.approx(longest[2], rel=1e-5)


@pytest.fixture
def fresh_dynamo():
    """torch.compile's caches emptied before and after: counts start from nothing and leak nowhere."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def graphs_per_step(cfg, data_root: Path) -> tuple[list[int], set[int]]:
    """Train the config's model, compiled, for STEPS batches of real ListOps data loaded as lra-train
    loads it; return the graphs compiled at each step, and the batch lengths seen.

    A counting backend (eager otherwise) counts every graph dynamo compiles: a graph break splits a
    forward pass into several graphs, all compiled at the first step; a graph compiled at a later
    step is a recompilation, for a shape (or anything else) a guard has not seen.
    """
    data = load_task(cfg.task, cfg.data, progress=False)
    task = task_config(cfg.task)
    torch.manual_seed(0)
    model = Classifier(cfg.model, task.vocab_size, task.num_classes, task.max_len)
    compiled: list[torch.fx.GraphModule] = []

    def counting(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        compiled.append(graph)
        return graph.forward

    optimizer = build_optimizer(model, cfg.optimizer)
    trainee = Trainee(model=model, forward=torch.compile(model, backend=counting), optimizer=optimizer,
                      scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    batches = StepBatches(len(data.train), cfg.trainer.batch_size, cfg.seed, 0, STEPS)
    per_step, lengths = [], set()
    for batch in DataLoader(data.train, batch_sampler=batches, **loader_options(cfg, CPU)):
        before = len(compiled)
        train_step(trainee, batch, cfg, CPU)
        per_step.append(len(compiled) - before)
        lengths.add(batch[0].shape[-1])
    return per_step, lengths


@pytest.mark.parametrize("model", ["full", "local"])
def test_a_compiled_model_compiles_once_on_batches_padded_to_max_len(tiny_cfg, tmp_path: Path, fresh_dynamo,
                                                                      model: str):
    """With the default under hardware.compile (pad to max_len) every graph is compiled at the first
    step and never again; padded to their longest, the same batches recompile on new lengths."""
    overrides = (f"model={model}", "trainer.batch_size=4", "hardware.compile=true")
    padded, lengths = graphs_per_step(tiny_cfg(*overrides), tmp_path)
    assert lengths == {48}
    assert padded[0] >= 1 and sum(padded[1:]) == 0
    torch._dynamo.reset()
    longest, lengths = graphs_per_step(tiny_cfg(*overrides, "hardware.pad_multiple=1"), tmp_path)
    assert len(lengths) >= 10
    assert sum(longest[1:]) > 0 and sum(longest) > sum(padded)


def test_a_multiple_bounds_the_graphs_by_the_lengths_it_leaves(tiny_cfg, tmp_path: Path, fresh_dynamo):
    """pad_multiple 16 at max_len 48: three lengths, so each graph is compiled at most three times."""
    per_step, lengths = graphs_per_step(tiny_cfg("trainer.batch_size=4", "hardware.pad_multiple=16"), tmp_path)
    assert lengths <= {16, 32, 48} and len(lengths) >= 2
    assert sum(per_step) <= 3 * per_step[0]
