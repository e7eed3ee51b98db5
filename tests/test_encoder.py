"""The encoder classifier: padding invariance end to end, pooling, and size checks."""

from __future__ import annotations

import pytest
import torch

from lra.errors import LRAError
from models.encoder import Classifier
from tests.conftest import compose_config


def build(*overrides: str) -> Classifier:
    cfg = compose_config("model.num_layers=2", "model.dim=32", "model.mlp_dim=64", *overrides)
    torch.manual_seed(0)
    return Classifier(cfg.model, vocab_size=20, num_classes=10, max_len=64).eval()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_padding_does_not_change_logits(pooling, impl):
    model = build(f"model.pooling={pooling}", f"model.attention.impl={impl}")
    gen = torch.Generator().manual_seed(1)
    short = torch.randint(1, 20, (1, 9), generator=gen)
    long = torch.randint(1, 20, (1, 30), generator=gen)
    alone = model(short, torch.ones_like(short, dtype=torch.bool))
    # the same sequence padded (with arbitrary token ids) in a batch with a longer one
    padded = torch.cat([short, torch.randint(1, 20, (1, 21), generator=gen)], dim=1)
    mask = torch.arange(30)[None, :] < torch.tensor([[9], [30]])
    batched = model(torch.cat([padded, long]), mask)
    assert torch.allclose(alone[0], batched[0], atol=1e-5)
    # and the padded tokens would matter if they were not masked
    assert not torch.allclose(alone[0], model(padded, torch.ones_like(padded, dtype=torch.bool))[0], atol=1e-3)


def test_rejects_sequences_longer_than_max_len_and_bad_head_split():
    model = build()
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.ones(1, 65, dtype=torch.long), torch.ones(1, 65, dtype=torch.bool))
    with pytest.raises(LRAError, match="model.dim"):
        build("model.num_heads=5")
