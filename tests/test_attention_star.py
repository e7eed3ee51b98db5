"""Star-Transformer attention against dense attention under the star pattern, built here from its
definition: the relay (first real token) sees all and is seen by all, the others a ring."""

from __future__ import annotations

import torch

from models.attention import build_attention
from tests.attention_reference import random_heads, real_positions, softmax_attention


def star_pattern(real):
    """(batch, 1, n, n) bool: the star over the real tokens of each sample, from the definition."""
    batch, n = real.shape
    allowed = torch.zeros(batch, n, n, dtype=torch.bool)
    for sample in range(batch):
        tokens = real[sample].nonzero().flatten().tolist()
        if not tokens:
            continue
        relay, ring = tokens[0], tokens[1:]
        allowed[sample, relay, tokens] = True
        for i, token in enumerate(ring):
            allowed[sample, token, [token, ring[i - 1], ring[(i + 1) % len(ring)], relay]] = True
    return allowed[:, None]


def build():
    return build_attention("star", num_heads=2, head_dim=16, max_len=64).eval()


def test_equals_dense_attention_under_the_star_pattern():
    q, k, v, mask = random_heads(dtype=torch.float64)
    mask[0, 0] = False  # the relay is the first real token, wherever that is
    mask[1, [3, 9]] = False  # and the ring follows the real tokens across holes
    attn = build()
    for real in (mask, torch.ones_like(mask)):
        expected = softmax_attention(q, k, v, allowed=star_pattern(real), key_padding_mask=real)
        out = attn(q, k, v, None if real.all() else real)
        assert torch.allclose(out[real_positions(real, out)], expected[real_positions(real, out)], atol=1e-12)
    # the pattern matters: exact attention is far from it at this logit scale
    exact = softmax_attention(q, k, v, key_padding_mask=mask)
    assert not torch.allclose(exact[real_positions(mask, exact)], attn(q, k, v, mask)[real_positions(mask, exact)], atol=0.1)


def test_short_rings_count_every_key_once():
    """Rings of 0 to 3 satellites: a neighbour that is also the token itself or the other
    neighbour is attended once, as in the dense pattern."""
    q, k, v, _ = random_heads(batch=3, length=8, dtype=torch.float64)
    attn = build()
    for length in (1, 2, 3, 4):
        real = torch.arange(8)[None].expand(3, -1) < length
        expected = softmax_attention(q, k, v, allowed=star_pattern(real), key_padding_mask=real)
        out = attn(q, k, v, real)
        assert torch.allclose(out[real_positions(real, out)], expected[real_positions(real, out)], atol=1e-12)


def test_padded_sample_equals_the_unpadded_sequence():
    q, k, v, mask = random_heads(dtype=torch.float64)
    attn = build()
    padded = attn(q, k, v, mask)
    for sample, length in enumerate(mask.sum(-1).tolist()):
        alone = attn(*(x[sample : sample + 1, :, :length] for x in (q, k, v)))
        assert torch.allclose(padded[sample : sample + 1, :, :length], alone, atol=1e-12)
