"""A training step waits for the device only where the loop needs numbers, and every model's forward
pass compiles to one graph: no graph breaks, no data-dependent shapes, no reads of tensors in a step."""

from __future__ import annotations

import math
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
import torch._dynamo

import lra.engine.loop as loop
from lra.engine.objectives import cross_entropy
from lra.engine.step import train_step
from lra.engine.training import trainee
from models.attention import ATTENTION, list_attention
from models.attention.sparse import BlockSparseAttention
from models.encoder import Classifier
from runners.train import train_run
from tasks.batching import pad_batch
from tests.conftest import REPO, TINY, compose_config

# The compiled forward pass: a batch padded to LENGTH < MAX_LEN (so block layouts are cropped), rows
# of LENGTH and fewer real tokens. Both span several length units (blocks, windows, buckets) of every
# variant's config.
MAX_LEN, LENGTH, REAL = 900, 700, (700, 480, 250)

# What reads a tensor back to the host (on an accelerator: waits for it), or gives a shape that
# depends on tensor values.
READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu", "nonzero")


def small_model(name: str) -> Classifier:
    """Variant `name`'s real config (task=listops), shrunk, with dropout on, in training mode."""
    cfg = compose_config(f"model={name}", "task=listops", "model.num_layers=1", "model.dim=32", "model.mlp_dim=64",
                         "model.num_heads=2", "model.dropout=0.1", "model.attention.dropout=0.1")
    torch.manual_seed(0)
    return Classifier(cfg.model, vocab_size=20, num_classes=10, max_len=MAX_LEN).train()


def padded_batch(lengths: tuple[int, ...] = REAL) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (1 .. 19, padding included) and the mask, False at the end of the shorter rows."""
    tokens = torch.randint(1, 20, (len(lengths), max(lengths)), generator=torch.Generator().manual_seed(0))
    return tokens, torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]


def break_reasons(explanation) -> str:
    """Each graph break's first line and the line of this repository's code it broke at."""
    lines = []
    for reason in explanation.break_reasons:
        frames = [f"{Path(f.filename).relative_to(REPO)}:{f.lineno}" for f in reason.user_stack
                  if Path(f.filename).is_relative_to(REPO) and ".venv" not in f.filename]
        lines.append(f"{reason.reason.splitlines()[0]} at {frames[-1] if frames else '?'}")
    return "\n".join(lines)


@pytest.mark.parametrize("name", list_attention())
def test_the_forward_pass_compiles_to_one_graph(name):
    model = small_model(name)
    tokens, mask = padded_batch()
    torch._dynamo.reset()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            explanation = torch._dynamo.explain(model)(tokens, mask)
    finally:
        torch._dynamo.reset()
    assert explanation.graph_break_count == 0, f"{name}:\n{break_reasons(explanation)}"
    assert explanation.graph_count == 1


def ours(filename: str) -> bool:
    """Whether `filename` is this repository's code that works on the device's tensors: not its
    tests, nor the data pipeline (tasks/), which builds batches on the host before they go there."""
    path = Path(filename)
    outside = (".venv", "tests", "tasks")
    return path.is_relative_to(REPO) and not any(path.is_relative_to(REPO / part) for part in outside)


@contextmanager
def reads_from_our_code(on_read: Callable[[str], None]) -> Iterator[None]:
    """Within, every read of a tensor (READS, and indexing by a boolean tensor) called from this
    repository's code calls `on_read` with its name and place; torch's own reads are let through
    (AdamW reads its CPU step counts, by design)."""
    names = (*READS, "__getitem__")
    own = {name: torch.Tensor.__dict__.get(name) for name in names}  # None: inherited from torch's C base
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def guarded(name: str, original: Callable) -> Callable:
        def read(self, *args, **kwargs):
            caller = sys._getframe(1)
            boolean_index = any(isinstance(a, torch.Tensor) and a.dtype == torch.bool
                                for a in (args[0] if args and isinstance(args[0], tuple) else args))
            if ours(caller.f_code.co_filename) and (name != "__getitem__" or boolean_index):
                on_read(f"Tensor.{name} at {Path(caller.f_code.co_filename).relative_to(REPO)}:{caller.f_lineno}")
            return original(self, *args, **kwargs)

        return read

    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, guarded(name, original))
        yield
    finally:
        for name, attribute in own.items():
            if attribute is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, attribute)


def fail(place: str) -> None:
    raise AssertionError(f"a training step read a tensor: {place}")


@pytest.mark.parametrize("name", list_attention())
def test_a_training_step_reads_no_tensor(name):
    """Forward, backward, update and the attention's step hook (Performer's redraw, routing's
    k-means), on a padded batch and on one without padding, in two micro-batches each."""
    redraw = ["model.attention.redraw_every=1"] if name == "performer" else []
    cfg = compose_config(*TINY, f"model={name}", "trainer.batch_size=4", "trainer.accumulate=2", *redraw)
    torch.manual_seed(0)
    trained = trainee(cfg, torch.device("cpu"), cross_entropy)
    ragged = pad_batch([((torch.randint(1, 10, (n,)),), n % 10) for n in (40, 12, 33, 7)])
    even = pad_batch([((torch.randint(1, 10, (20,)),), n) for n in range(4)])
    before = [p.detach().clone() for p in trained.model.parameters()]
    with reads_from_our_code(fail):
        for batch in (ragged, even, ragged):
            losses = train_step(trained, batch, cfg, torch.device("cpu"))
    assert ragged[1] is not None and even[1] is None  # the collate function says "no padding" on the host
    assert set(losses) == {"loss"} and torch.isfinite(losses["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trained.model.parameters()))


def test_the_loop_reads_losses_only_at_the_steps_that_log_validate_or_checkpoint(tmp_path: Path):
    """Runs of 2 and 8 steps that log, validate and checkpoint at their last step only read as
    many tensors: none of their steps reads its losses."""
    counts = []
    for steps in (2, 8):
        places: list[str] = []
        cfg = compose_config(*TINY, f"data.root={tmp_path / 'data'}", f"trainer.max_steps={steps}",
                             *(f"trainer.{key}={steps}" for key in ("log_every", "eval_every", "checkpoint_every")))
        with reads_from_our_code(places.append):
            record = train_run(cfg, tmp_path / f"run{steps}")
        assert record["status"] == "ok" and record["metrics"]["train_loss"] > 0
        counts.append(Counter(places))
    assert counts[0] == counts[1], f"reads the longer run adds: {counts[1] - counts[0]}"


def test_the_loop_reads_every_steps_loss_in_order(tiny_cfg, tmp_path: Path, monkeypatch):
    """The losses the loop keeps (the record's train_loss) are those train_step returned, step by step."""
    returned = []

    def recording_step(*args, **kwargs):
        losses = train_step(*args, **kwargs)
        returned.append(float(losses["loss"]))
        return losses

    monkeypatch.setattr(loop, "train_step", recording_step)
    record = train_run(tiny_cfg("trainer.log_every=6", "trainer.max_steps=20"), tmp_path / "run")
    kept = returned[-6:]  # the last log_every steps
    assert len(returned) == 20 and record["metrics"]["train_loss"] == pytest.approx(sum(kept) / len(kept))


def test_a_batch_without_padding_has_no_mask():
    tokens, mask, _ = pad_batch([((torch.tensor([3, 4, 5]),), 0), ((torch.tensor([6, 7, 8]),), 1)])
    assert mask is None and tokens.shape == (2, 3)
    tokens, mask, _ = pad_batch([((torch.tensor([1, 2]), torch.tensor([3, 4])), 0)])
    assert mask is None and tokens.shape == (1, 2, 2)


@pytest.mark.parametrize("name", list_attention())
def test_no_mask_gives_the_outputs_of_a_mask_with_no_padding(name):
    """The model no longer drops an all-True mask itself: without one it must compute the same."""
    model = small_model(name).eval()
    tokens, _ = padded_batch((LENGTH,) * 2)
    with torch.no_grad():
        unmasked, masked = model(tokens, None), model(tokens, torch.ones_like(tokens, dtype=torch.bool))
    assert torch.allclose(unmasked, masked, atol=1e-5), (unmasked - masked).abs().max()


BLOCK_SPARSE = [name for name in list_attention() if issubclass(ATTENTION.get(name)[0], BlockSparseAttention)]


@pytest.mark.parametrize("name", BLOCK_SPARSE)
def test_a_cropped_layout_is_the_layout_built_for_its_length(name):
    """Cropping max_len's layout by shapes alone gives the pattern built for the shorter length,
    and never gathers more key blocks than it."""
    attn = small_model(name).encoder.blocks[0].attn
    for n in (1, 37, 260, 700, MAX_LEN + 1):
        cropped, built = attn.layout(n), attn.build_layout(math.ceil(n / attn.block))
        assert torch.equal(cropped.dense(n), built.dense(n)), n
        assert cropped.slots <= built.slots, n
    with pytest.raises(ValueError, match="exceeds"):
        attn.layout(attn.max_blocks * attn.block + 1)
