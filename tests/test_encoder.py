"""The encoder classifier: padding invariance end to end, pooling, and size checks."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from lra.errors import LRAError
from models.attention import list_attention
from models.encoder import Classifier
from tests.attention_reference import longest_unit
from tests.conftest import compose_config

# The padding check: a sequence of SHORT tokens alone, then padded to MAX_LEN in a batch with a
# sequence of MAX_LEN tokens. SHORT spans at least three length units (blocks, windows, buckets) of
# every variant's config, so that block layouts and buckets are at work, not one block of everything.
MAX_LEN, SHORT = 900, 780


def build(*overrides: str) -> Classifier:
    cfg = compose_config("model.num_layers=2", "model.dim=32", "model.mlp_dim=64", *overrides)
    torch.manual_seed(0)
    return Classifier(cfg.model, vocab_size=20, num_classes=10, max_len=MAX_LEN).eval()


@pytest.mark.parametrize("pooling", ["cls", "mean", "first"])
@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_padding_does_not_change_logits(pooling, impl):
    assert_padding_invariant(build(f"model.pooling={pooling}", f"model.attention.impl={impl}"))


def test_first_pooling_reads_the_first_tokens_output_and_prepends_nothing():
    model = build("model.pooling=first")
    assert model.encoder.cls is None and model.encoder.positions.shape[0] == MAX_LEN
    tokens = torch.randint(1, 20, (3, MAX_LEN))
    hidden = {}
    model.encoder.norm.register_forward_hook(lambda module, args, out: hidden.setdefault("x", out))
    with torch.no_grad():
        pooled = model.encoder(tokens, None)
    assert torch.equal(pooled, hidden["x"][:, 0])


@pytest.mark.parametrize("name", list_attention())
def test_padding_does_not_change_logits_whatever_the_attention(name):
    """Mean pooling: every real token's output reaches the logits, not only what reaches the CLS token."""
    attention = OmegaConf.to_container(compose_config(f"model={name}").model.attention)
    assert SHORT >= 3 * longest_unit(attention), f"{name}: raise SHORT to span three of its units"
    assert_padding_invariant(build(f"model={name}", "model.pooling=mean"))


def test_a_shared_qk_attention_gets_its_keys_from_the_query_projection():
    model = build("model=lsh")
    block = model.encoder.blocks[0]
    assert block.attn.shared_qk and block.qkv.out_features == 2 * 32
    seen = []
    block.attn.register_forward_hook(lambda module, args, out: seen.append(args))
    model(torch.ones(1, 8, dtype=torch.long), torch.ones(1, 8, dtype=torch.bool))
    q, k, v = seen[0]
    assert k is q and not torch.equal(v, q)


@torch.no_grad()
def assert_padding_invariant(model: Classifier) -> None:
    gen = torch.Generator().manual_seed(1)
    short = torch.randint(1, 20, (1, SHORT), generator=gen)
    long = torch.randint(1, 20, (1, MAX_LEN), generator=gen)
    alone = model(short, torch.ones_like(short, dtype=torch.bool))
    # the same sequence padded (with arbitrary token ids) in a batch with a longer one
    padded = torch.cat([short, torch.randint(1, 20, (1, MAX_LEN - SHORT), generator=gen)], dim=1)
    mask = torch.arange(MAX_LEN)[None, :] < torch.tensor([[SHORT], [MAX_LEN]])
    batched = model(torch.cat([padded, long]), mask)
    assert torch.allclose(alone[0], batched[0], atol=1e-5), (alone[0] - batched[0]).abs().max()
    # and the padded tokens would matter if they were not masked
    assert not torch.allclose(alone[0], model(padded, torch.ones_like(padded, dtype=torch.bool))[0], atol=1e-3)


def test_rejects_sequences_longer_than_max_len_and_bad_head_split():
    model = build()
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.ones(1, MAX_LEN + 1, dtype=torch.long), torch.ones(1, MAX_LEN + 1, dtype=torch.bool))
    with pytest.raises(LRAError, match="model.dim"):
        build("model.num_heads=5")
