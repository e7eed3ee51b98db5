"""Full attention: the registry, sdpa == math, and padding that never leaks into real positions."""

from __future__ import annotations

import pytest
import torch

from lra.errors import LRAError
from models.attention import build_attention, list_attention


def reference_attention(q, k, v, mask):
    """Softmax attention written out in float64, independent of the module under test."""
    q, k, v = q.double(), k.double(), v.double()
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)


def inputs(batch=3, heads=2, length=37, dim=16, dtype=torch.float32, scale=2.0, seed=0):
    """randn inputs with logit std about `scale` (not near-uniform attention), and ragged padding."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=gen, dtype=dtype) for _ in range(3))
    q = q * scale**0.5
    k = k * scale**0.5
    lengths = torch.tensor([length, length - 11, 5])[:batch]
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return q, k, v, mask


def test_full_is_registered_and_unknown_names_are_refused():
    assert "full" in list_attention()
    with pytest.raises(LRAError, match="unknown attention 'nope'.*full"):
        build_attention("nope", num_heads=2, head_dim=8, max_len=16)


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_full_matches_reference_softmax(impl):
    q, k, v, mask = inputs(dtype=torch.float64)
    attn = build_attention("full", num_heads=2, head_dim=16, max_len=37, impl=impl).eval()
    out = attn(q, k, v, key_padding_mask=mask)
    assert torch.allclose(out, reference_attention(q, k, v, mask), atol=1e-10)
    # and attention is not trivially the mean of V at this logit scale
    assert (out - v.mean(-2, keepdim=True)).abs().max() > 0.5


def test_sdpa_and_math_agree_in_fp32_with_padding():
    q, k, v, mask = inputs()
    sdpa = build_attention("full", num_heads=2, head_dim=16, max_len=37, impl="sdpa").eval()
    math = build_attention("full", num_heads=2, head_dim=16, max_len=37, impl="math").eval()
    for key_padding_mask in (mask, None):
        a, b = sdpa(q, k, v, key_padding_mask), math(q, k, v, key_padding_mask)
        assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_padded_positions_do_not_change_real_outputs(impl):
    q, k, v, mask = inputs()
    attn = build_attention("full", num_heads=2, head_dim=16, max_len=37, impl=impl).eval()
    noise = torch.randn_like(k) * 100
    pad = ~mask[:, None, :, None]
    out = attn(q, k, v, mask)
    out_noisy = attn(q, torch.where(pad, noise, k), torch.where(pad, noise, v), mask)
    real = mask[:, None, :, None].expand_as(out)
    assert torch.allclose(out[real], out_noisy[real], atol=1e-6)
    # without the mask the noise would change them: the check above is not vacuous
    assert not torch.allclose(attn(q, torch.where(pad, noise, k), v, None)[real], out[real], atol=1e-3)


def test_dropout_only_in_training():
    q, k, v, mask = inputs()
    attn = build_attention("full", num_heads=2, head_dim=16, max_len=37, impl="math", dropout=0.5)
    attn.eval()
    assert torch.equal(attn(q, k, v, mask), attn(q, k, v, mask))
    attn.train()
    assert not torch.allclose(attn(q, k, v, mask), attn.eval()(q, k, v, mask))
