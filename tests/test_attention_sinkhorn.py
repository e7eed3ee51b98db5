"""Sparse Sinkhorn attention: exact with one block, exact under a hard block permutation, the
Sinkhorn operator's balance, a learned sort, and padding that never enters."""

from __future__ import annotations

import pytest
import torch

from lra.errors import LRAError
from models.attention import build_attention
from models.attention.sinkhorn import sinkhorn
from tests.attention_reference import random_heads, real_positions, softmax_attention


def build(max_len=37, **overrides):
    return build_attention("sinkhorn", num_heads=2, head_dim=16, max_len=max_len, **overrides).double().eval()


def close_at_real(out, expected, mask, atol):
    real = real_positions(mask, out)
    return torch.allclose(out[real], expected[real].to(out.dtype), atol=atol, rtol=0)


def test_one_block_is_exact_attention():
    """The sorted block is then the block itself: every key counted twice, the softmax unchanged."""
    q, k, v, mask = random_heads(dtype=torch.float64)
    attn = build(block=64)
    assert close_at_real(attn(q, k, v, mask), softmax_attention(q, k, v, key_padding_mask=mask), mask, 1e-12)
    assert torch.allclose(attn(q, k, v), softmax_attention(q, k, v), atol=1e-12, rtol=0)


def test_hard_permutation_is_dense_attention_to_own_and_partner_block():
    q, k, v, mask = random_heads(dtype=torch.float64)  # 37 tokens: 5 blocks of 8, the last partly added padding
    attn = build(block=8)
    partner = torch.tensor([3, 0, 4, 1, 2])  # slot l takes key block partner[l]
    perm = torch.zeros(5, 5, dtype=torch.float64)
    perm[partner, torch.arange(5)] = 1.0
    attn.permutation = lambda key_blocks, real: perm.expand(*key_blocks.shape[:2], 5, 5)
    block = torch.arange(37) // 8
    allowed = (block[:, None] == block[None, :]) | (partner[block][:, None] == block[None, :])
    assert 0.2 < allowed.double().mean() < 0.6
    expected = softmax_attention(q, k, v, allowed=allowed, key_padding_mask=mask)
    assert close_at_real(attn(q, k, v, mask), expected, mask, 1e-12)
    # the pattern matters: exact attention is far from it at this logit scale
    assert not close_at_real(softmax_attention(q, k, v, key_padding_mask=mask), expected, mask, 0.1)


def test_sinkhorn_balances_rows_and_columns_within_each_kind_of_block():
    logits = torch.randn(2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    balanced = sinkhorn(logits, 200)
    assert torch.allclose(balanced.sum(-1), torch.ones(2, 6, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(balanced.sum(-2), torch.ones(2, 6, dtype=torch.float64), atol=1e-12)
    assert not torch.allclose(sinkhorn(logits, 1).sum(-1), torch.ones(2, 6, dtype=torch.float64), atol=1e-3)

    q, k, v, mask = random_heads(length=40, dtype=torch.float64)  # blocks of 8: 5, 4 and 1 hold a real token
    attn = build(max_len=40, block=8, sinkhorn_iters=60)
    perm = attn.permutation(k.reshape(3, 2, 5, 8, 16), mask)
    has_real = mask.view(3, 5, 8).any(-1)
    same_kind = has_real[:, None, :, None] == has_real[:, None, None, :]
    assert (perm[~same_kind.expand_as(perm)] == 0).all()
    assert torch.allclose(perm.sum(-2), torch.ones(3, 2, 5, dtype=torch.float64), atol=1e-12)


def test_the_sort_is_learned():
    q, k, v, mask = random_heads(length=64)
    attn = build_attention("sinkhorn", num_heads=2, head_dim=16, max_len=64, block=8)
    k = k.clone().requires_grad_()
    attn(q, k, v, mask).square().sum().backward()
    assert attn.sort_net.weight.grad.abs().sum() > 0  # the loss reaches the sort net ...
    before = attn.eval()(q, k, v, mask)
    with torch.no_grad():
        attn.sort_net.weight.add_(torch.randn_like(attn.sort_net.weight))
    assert not torch.allclose(attn(q, k, v, mask), before, atol=1e-3)  # ... and the sort changes the output


def test_padded_sample_equals_the_unpadded_sequence():
    """Blocks of padding only never mix with real ones: trailing padding is as if absent."""
    q, k, v, mask = random_heads(dtype=torch.float64)
    attn = build(block=8)
    padded = attn(q, k, v, mask)
    for sample, length in enumerate(mask.sum(-1).tolist()):
        alone = attn(*(x[sample : sample + 1, :, :length] for x in (q, k, v)))
        assert torch.allclose(padded[sample : sample + 1, :, :length], alone, atol=1e-12)


def test_bad_settings_and_lengths_name_the_key():
    with pytest.raises(LRAError, match="model.attention.block=0: must be at least 1"):
        build(block=0)
    with pytest.raises(LRAError, match="model.attention.temperature=0.0: must be greater than 0"):
        build(temperature=0.0)
    with pytest.raises(LRAError, match="exceeds its max_len"):
        build(max_len=16, block=8)(*random_heads()[:3])
