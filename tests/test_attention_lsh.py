"""LSH attention (Reformer): exact in the one-round, two-bucket case, the dense form of several
rounds, the hash itself, and a useful approximation on clustered inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.attention import build_attention
from models.attention.lsh import SELF_LOGIT, hash_buckets
from tests.attention_reference import random_heads, real_positions


def shared_qk_attention(q, v, key_padding_mask=None, allowed=None):
    """Reformer's shared-QK softmax attention in float64: logits q . k with k = q / |q|, a token
    attending to itself only when no other allowed real key exists.

    `allowed`: bool (batch, heads, rounds, queries, keys), the keys each query sees in each round;
    the softmax then runs over every (round, key) pair at once. None: one round seeing every key.
    """
    q, v = q.double(), v.double()
    length = q.shape[-2]
    scores = (q @ (q / q.norm(dim=-1, keepdim=True)).transpose(-1, -2)).unsqueeze(2)
    if allowed is None:
        allowed = torch.ones(1, 1, 1, length, length, dtype=torch.bool)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, None, :]
    self_ = torch.eye(length, dtype=torch.bool)
    others = allowed & ~self_
    alone = ~others.any(-1).any(2)  # (batch, heads, queries): no other key in any round
    allowed = others | (alone[:, :, None, :, None] & self_)
    scores = scores.masked_fill(~allowed, float("-inf"))  # (batch, heads, rounds, queries, keys)
    probs = scores.transpose(2, 3).flatten(-2).softmax(-1).view_as(scores.transpose(2, 3))
    return torch.einsum("bhqrk,bhkd->bhqd", probs, v)


def windows_of(order, bucket_size, mask):
    """The keys each query sees: its chunk of the sorted order and the previous one; the first
    chunk's previous one is the last chunk holding a real token (chunk 1 when only the first does)."""
    chunk = order.argsort(-1) // bucket_size  # (batch, heads, rounds, length): chunk of each position
    real_chunks = (mask.sum(-1) + bucket_size - 1) // bucket_size
    wrap = (real_chunks - 1).clamp(min=1).view(-1, 1, 1, 1, 1)
    query, key = chunk[..., :, None], chunk[..., None, :]
    return (key == query) | (key == torch.where(query == 0, wrap, query - 1))


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("padded", [False, True])
def test_one_round_of_two_buckets_is_shared_qk_full_attention(dtype, atol, padded):
    q, _, v, mask = random_heads(length=16, dtype=dtype)
    mask = mask if padded else None
    q.requires_grad_(True)
    v.requires_grad_(True)
    attn = build_attention("lsh", num_heads=2, head_dim=16, max_len=16, bucket_size=8, n_hashes=1).eval()
    out = attn(q, q, v, mask)
    expected = shared_qk_attention(q, v, mask)
    real = torch.ones_like(out, dtype=torch.bool) if mask is None else real_positions(mask, out)
    assert torch.allclose(out[real].double(), expected[real], atol=atol, rtol=0)
    # gradients through the sort, the chunk windows and the unsort are those of the dense form
    grads = torch.autograd.grad(out[real].sum(), (q, v))
    expected_grads = torch.autograd.grad(expected[real].sum(), (q, v))
    for got, want in zip(grads, expected_grads):
        assert torch.allclose(got.double(), want.double(), atol=100 * atol, rtol=0)


def test_self_only_when_nothing_else():
    q, _, v, _ = random_heads(batch=1, length=16, dtype=torch.float64)
    attn = build_attention("lsh", num_heads=2, head_dim=16, max_len=16, bucket_size=8, n_hashes=1).eval()
    lone = torch.zeros(1, 16, dtype=torch.bool)
    lone[0, 3] = True
    assert torch.allclose(attn(q, q, v, lone)[:, :, 3], v[:, :, 3])
    # with company, a token does not attend to itself although q . q/|q| is its largest logit:
    # with one-hot values the output rows are the attention probabilities
    probs = attn(q, q, torch.eye(16, dtype=q.dtype).expand(1, 2, 16, 16))
    assert probs.diagonal(dim1=-2, dim2=-1).max() < 1e-12
    assert torch.allclose(probs.sum(-1), torch.ones(1, 2, 16, dtype=q.dtype))
    assert SELF_LOGIT > torch.finfo(torch.float16).min


def test_several_rounds_are_one_softmax_over_every_window():
    q, _, v, mask = random_heads(length=64, dim=8, dtype=torch.float64, seed=1)
    attn = build_attention("lsh", num_heads=2, head_dim=8, max_len=64, bucket_size=8, n_hashes=3).eval()
    order = attn.sort_order(q, mask)
    out = attn(q, q, v, mask)
    expected = shared_qk_attention(q, v, mask, allowed=windows_of(order, 8, mask))
    real = real_positions(mask, out)
    assert torch.allclose(out[real], expected[real], atol=1e-12)
    # the rounds differ: averaging their outputs uniformly would not give the same result
    rounds = [shared_qk_attention(q, v, mask, allowed=windows_of(order[:, :, r : r + 1], 8, mask)) for r in range(3)]
    assert (sum(rounds) / 3 - out)[real].abs().max() > 1e-3


def test_round_weights_sum_to_one():
    q, _, v, mask = random_heads(length=200, dim=8, seed=2)
    attn = build_attention("lsh", num_heads=2, head_dim=8, max_len=200, bucket_size=8, n_hashes=4).eval()
    out = attn(q, q, torch.ones_like(v), mask)
    real = real_positions(mask, out)
    assert torch.allclose(out[real], torch.ones_like(out[real]), atol=1e-5)


def test_sort_order_is_by_bucket_then_position_with_padding_last():
    q, _, _, mask = random_heads(length=48, dim=8)
    attn = build_attention("lsh", num_heads=2, head_dim=8, max_len=48, bucket_size=8, n_hashes=2).eval()
    order = attn.sort_order(q, mask)
    buckets = hash_buckets(q, attn.rotations[..., :3])  # 48 / 8 = 6 buckets
    buckets = buckets.masked_fill(~mask[:, None, None, :], 6)  # padding: a bucket after every real one
    sort_key = buckets.gather(-1, order) * 48 + order
    assert (sort_key.diff(dim=-1) > 0).all()  # strictly increasing: a permutation, sorted
    # so the real tokens fill the first sorted slots of every round
    real_sorted = mask.gather(1, order.flatten(1, 3)).view_as(order)
    assert torch.equal(real_sorted, torch.arange(48).expand_as(order) < mask.sum(1)[:, None, None, None])


def test_hash_is_argmax_over_rotation_and_its_negation():
    x = torch.randn(3, 100, 16)
    rotations = torch.randn(2, 16, 5)
    rotated = torch.einsum("bnd,rdk->brnk", x, rotations)
    expected = torch.cat([rotated, -rotated], dim=-1).argmax(-1)
    buckets = hash_buckets(x, rotations)
    assert torch.equal(buckets, expected)
    assert torch.equal(hash_buckets(-x, rotations), (buckets + 5) % 10)
    assert torch.equal(hash_buckets(3.0 * x, rotations), buckets)  # angular: scale does not matter


def test_similar_vectors_share_buckets_and_buckets_are_balanced():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 32, generator=gen)
    near = x + 0.1 * x.norm(dim=-1, keepdim=True) / 32**0.5 * torch.randn(4096, 32, generator=gen)
    rotations = torch.randn(4, 32, 8, generator=gen)  # 4 rounds of 16 buckets
    buckets, near_buckets = hash_buckets(x, rotations), hash_buckets(near, rotations)
    assert (buckets == near_buckets).float().mean() > 0.8
    assert (buckets == buckets.roll(1, dims=-1)).float().mean() < 0.1  # random pairs: about 1/16
    # every bucket used, frequencies close to uniform (entropy, normalised to 1 for uniform)
    freq = torch.stack([torch.bincount(b, minlength=16) for b in buckets]).float() / 4096
    assert (freq > 0).all()
    assert (-(freq * freq.log()).sum(-1) / torch.log(torch.tensor(16.0)) > 0.9).all()


def clustered_heads(length=256, dim=16, clusters=16, norm=8.0, spread=0.2, seed=0):
    """Queries in `clusters` clusters sharing a direction (angular spread about `spread` radians,
    norm `norm`: logits about `norm` within a cluster, of std norm / sqrt(dim) across), and randn
    values."""
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, dim, generator=gen, dtype=torch.float64), dim=-1)
    which = torch.randint(clusters, (2, 2, length), generator=gen)
    noise = torch.randn(2, 2, length, dim, generator=gen, dtype=torch.float64) * spread / dim**0.5
    v = torch.randn(2, 2, length, dim, generator=gen, dtype=torch.float64)
    return norm * F.normalize(centres[which] + noise, dim=-1), v


def test_beats_mean_of_values_on_clustered_inputs():
    q, v = clustered_heads()
    exact = shared_qk_attention(q, v)
    trivial = (v.mean(-2, keepdim=True) - exact).norm() / exact.norm()
    errors = {}
    for rounds in (1, 4):
        torch.manual_seed(0)
        attn = build_attention("lsh", num_heads=2, head_dim=16, max_len=256, bucket_size=32, n_hashes=rounds)
        attn.eval()
        errors[rounds] = (attn(q, q, v) - exact).norm() / exact.norm()
    assert trivial > 0.9  # attention is far from uniform: the output is about the cluster's mean value
    # A chunk pair misses part of a query's cluster, and a mean over fewer random values is far
    # from the cluster's: one round is no better than the trivial output; several rounds are.
    assert errors[4] < 0.6 * trivial
    assert errors[4] < 0.6 * errors[1]


def test_rotations_redrawn_in_training_only_when_asked():
    q, _, v, mask = random_heads(length=64, dim=8)
    for redraw in (True, False):
        attn = build_attention("lsh", num_heads=2, head_dim=8, max_len=64, bucket_size=8, redraw=redraw)
        first, second, fixed = attn(q, q, v, mask), attn(q, q, v, mask), attn.eval()(q, q, v, mask)
        real = real_positions(mask, first)
        assert torch.equal(first[real], second[real]) is not redraw
        assert torch.equal(first[real], fixed[real]) is not redraw
