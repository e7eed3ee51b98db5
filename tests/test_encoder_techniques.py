"""Model-level techniques of the encoder: ALBERT's shared layers and factorized embeddings, and the
Reformer's reversible layers (gradients as ordinary autograd's, memory flat in depth)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lra.errors import LRAError
from lra.measure import peak_memory
from models.attention import list_attention
from models.encoder import Classifier, check_model_config
from models.reversible import couple, reversible
from tests.attention_reference import ragged_mask
from tests.conftest import compose_config

VOCAB, CLASSES = 20, 10


def build(*overrides: str, max_len: int = 64) -> Classifier:
    cfg = compose_config("model.num_layers=4", "model.dim=32", "model.mlp_dim=64", *overrides)
    torch.manual_seed(0)
    return Classifier(cfg.model, vocab_size=VOCAB, num_classes=CLASSES, max_len=max_len)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_shared_layers_run_one_set_of_parameters():
    ordinary, shared = build(), build("model.encoder.share_layers=true")
    block = count(ordinary.encoder.blocks[0])
    assert count(ordinary) - count(shared) == 3 * block  # four layers, one block's parameters
    layers = shared.encoder.layers()
    assert len(layers) == 4 and all(layer is layers[0] for layer in layers)
    assert len(shared.encoder.blocks) == 1 and not any(".blocks.1." in key for key in shared.state_dict())
    # every layer's use of the block reaches the same gradient: four times the work of one layer
    tokens = torch.randint(VOCAB, (2, 16))
    F.cross_entropy(shared(tokens, None), torch.tensor([1, 2])).backward()
    uses = []
    layers[0].qkv.register_forward_hook(lambda *args: uses.append(1))
    shared(tokens, None)
    assert len(uses) == 4 and layers[0].qkv.weight.grad.abs().sum() > 0


def test_factorized_embeddings_embed_narrow_and_project_up():
    full, narrow = build(), build("model.encoder.embed_dim=8")
    assert narrow.encoder.embed.weight.shape == (VOCAB, 8)
    assert narrow.encoder.embed_up.weight.shape == (32, 8)
    assert count(full) - count(narrow) == VOCAB * 32 - (VOCAB * 8 + 8 * 32)
    assert narrow(torch.randint(VOCAB, (2, 16)), None).shape == (2, CLASSES)
    cfg = compose_config("model.encoder.embed_dim=0")
    with pytest.raises(LRAError, match="model.encoder.embed_dim"):
        check_model_config(cfg.model, 64)


@pytest.mark.parametrize("name", list_attention())
def test_reversible_gradients_equal_those_of_ordinary_autograd(name):
    """The recomputing backward against autograd through the same layers kept in memory, with
    dropout on: the random state of every sub-layer is replayed. fp32, to 1e-5."""
    model = build(f"model={name}", "model.dropout=0.1", "model.attention.dropout=0.1",
                  "model.encoder.reversible=true").train()
    layers = model.encoder.layers()
    x = torch.randn(3, 40, 32)
    mask = ragged_mask(3, 40)
    weights = torch.randn(3, 40, 32)

    def gradients(forward):
        model.zero_grad()
        inputs = x.clone().requires_grad_()
        torch.manual_seed(1)
        (forward(inputs) * weights).sum().backward()
        return [inputs.grad] + [p.grad for p in model.parameters() if p.grad is not None]

    def stored(inputs):
        x1 = x2 = inputs
        for layer in layers:
            x1, x2 = couple(layer, x1, x2, mask)
        return (x1 + x2) / 2

    outputs = []
    for forward in (lambda inputs: reversible(layers, inputs, mask), stored):
        torch.manual_seed(1)
        outputs.append(forward(x))
    assert torch.equal(*outputs)  # the same function
    recomputed, ordinary = gradients(lambda inputs: reversible(layers, inputs, mask)), gradients(stored)
    assert len(recomputed) == len(ordinary) > 10
    for got, want in zip(recomputed, ordinary):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got - want).abs().max()
    # and without a replayed random state the dropout masks would differ
    torch.manual_seed(2)
    assert not torch.allclose(stored(x), reversible(layers, x, mask).detach())


def training_peak_mb(layers: int, *overrides: str) -> float:
    """Counted peak memory (live tensor bytes) of a forward and backward pass through `layers`."""
    model = build(f"model.num_layers={layers}", "model.dropout=0.0", "model.attention.dropout=0.0",
                  *overrides, max_len=512).train()
    tokens = torch.randint(VOCAB, (4, 512))
    with peak_memory(torch.device("cpu")) as memory:
        F.cross_entropy(model(tokens, None), torch.zeros(4, dtype=torch.long)).backward()
    return memory.mb


def test_reversible_training_memory_does_not_grow_with_depth():
    ordinary = training_peak_mb(8) / training_peak_mb(2)
    flat = training_peak_mb(8, "model.encoder.reversible=true") / training_peak_mb(2, "model.encoder.reversible=true")
    assert ordinary > 3.0, ordinary
    assert flat <= 1.3, flat
