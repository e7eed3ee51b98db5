"""Synthesizer attention: weights written out from the parameters, no query-key products, each
query's row from that query alone (dense), and padding that never enters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lra.errors import LRAError
from models.attention import build_attention
from tests.attention_reference import random_heads, real_positions

MODES = ["dense", "factorized_random"]


def build(mode, max_len=40, **overrides):
    return build_attention("synthesizer", num_heads=2, head_dim=16, max_len=max_len, mode=mode, **overrides).double().eval()


def expected_logits(attn, q):
    """The synthesized logits (batch or 1, heads, n, n), written out from the parameters."""
    n = q.shape[2]
    if attn.mode.value == "dense":
        hidden = F.relu(q @ attn.hidden.weight.T + attn.hidden.bias)
        return hidden @ attn.to_keys.weight[:n].T + attn.to_keys.bias[:n]
    r1, r2 = attn.factors[0, :, :n], attn.factors[1, :, :n]
    return (r1 @ r2.transpose(-2, -1))[None]


@pytest.mark.parametrize("mode", MODES)
def test_equals_softmax_of_the_synthesized_weights(mode):
    q, k, v, mask = random_heads(dtype=torch.float64)
    attn = build(mode)
    logits = expected_logits(attn, q).masked_fill(~mask[:, None, None, :], float("-inf"))
    expected = logits.softmax(-1) @ v
    real = real_positions(mask, expected)
    assert torch.allclose(attn(q, k, v, mask)[real], expected[real], atol=1e-12)
    assert torch.allclose(attn(q, k, v), expected_logits(attn, q).softmax(-1) @ v, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_no_query_key_products(mode):
    """Keys never matter; in dense mode a query changes its own row only, in factorized_random none."""
    q, k, v, mask = random_heads(dtype=torch.float64)
    attn = build(mode)
    out = attn(q, k, v, mask)
    assert torch.equal(attn(q, torch.randn_like(k), v, mask), out)
    moved = q.clone()
    moved[:, :, 7] += 3.0
    changed = (attn(moved, k, v, mask) - out).abs().amax(dim=(1, 3)) > 1e-9  # (batch, position)
    expected = torch.zeros_like(changed)
    if mode == "dense":
        expected[:, 7] = True
    assert torch.equal(changed[:2], expected[:2])  # samples of 37 and 26 real tokens
    assert not changed[2, :5].any()  # 5 real tokens: position 7 is padding


@pytest.mark.parametrize("mode", MODES)
def test_padded_sample_equals_the_unpadded_sequence(mode):
    q, k, v, mask = random_heads(dtype=torch.float64)
    attn = build(mode)
    padded = attn(q, k, v, mask)
    for sample, length in enumerate(mask.sum(-1).tolist()):
        alone = attn(*(x[sample : sample + 1, :, :length] for x in (q, k, v)))
        assert torch.allclose(padded[sample : sample + 1, :, :length], alone, atol=1e-12)


def test_bad_settings_and_lengths_name_the_key():
    with pytest.raises(LRAError, match="model.attention.k=0: must be at least 1"):
        build("factorized_random", k=0)
    with pytest.raises(LRAError, match="exceeds its max_len 16"):
        build("dense", max_len=16)(*random_heads(dtype=torch.float64)[:3])
