"""Routing attention: exact with one centroid, exactly dense attention under its own routing,
balanced clusters, the chunk layout whatever the clusters' sizes, the hand-written backward, the
online k-means update, content-based reach, its O(n * n / c) cost, one graph under torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lra.errors import LRAError
from models.attention import build_attention
from models.attention.routing import chunk_attention, chunk_slots, dropout_keep
from tests.attention_reference import LargestTensor, random_heads, real_positions, softmax_attention


def build(max_len=37, **overrides):
    return build_attention("routing", num_heads=2, head_dim=16, max_len=max_len, **overrides).double().eval()


def routed_pattern(query_cluster, cluster_keys, n):
    """(batch, heads, n, n) bool: query i attends the keys of its cluster, from the routing itself."""
    keys_of_query = cluster_keys.gather(2, query_cluster[..., None].expand(-1, -1, -1, cluster_keys.shape[-1]))
    allowed = torch.zeros(*query_cluster.shape, n, dtype=torch.bool)
    return allowed.scatter_(-1, keys_of_query, True)


def test_one_centroid_is_exact_attention():
    q, k, v, mask = random_heads(dtype=torch.float64)
    attn = build(window=64)
    assert attn.centroids.shape[1] == 1
    real = real_positions(mask, q)
    expected = softmax_attention(q, k, v, key_padding_mask=mask)
    assert torch.allclose(attn(q, k, v, mask)[real], expected[real], atol=1e-12)


@pytest.mark.parametrize("masked", [True, False])
def test_equals_dense_attention_under_its_own_routing(masked):
    q, k, v, mask = random_heads(dtype=torch.float64)
    mask = mask if masked else None
    attn = build(window=8)  # 5 centroids, clusters of 8 keys
    query_cluster, cluster_keys = attn.route(q, k, mask)
    assert cluster_keys.shape == (3, 2, 5, 8)
    assert (cluster_keys.sort(-1).values.diff(dim=-1) > 0).all()  # w distinct keys in every cluster
    if mask is not None:  # real keys first: a cluster holds padding only where a sample has under w real keys
        assert (mask.gather(1, cluster_keys[:2].flatten(1))).all()
    allowed = routed_pattern(query_cluster, cluster_keys, 37)
    assert (allowed.sum(-1) == 8).all()  # every query attends exactly w keys
    expected = softmax_attention(q, k, v, allowed=allowed, key_padding_mask=mask)
    out = attn(q, k, v, mask)
    real = real_positions(mask if masked else torch.ones(3, 37, dtype=torch.bool), out)
    assert torch.allclose(out[real], expected[real], atol=1e-12)
    assert len(query_cluster.unique()) > 1  # the queries are really spread over clusters


@pytest.mark.parametrize(
    "sizes", [[40, 0, 0, 0, 0], [1, 1, 1, 1, 36], [9, 9, 9, 9, 4], [0, 17, 0, 23, 0], [8, 8, 8, 8, 8]]
)
def test_chunks_hold_one_cluster_each_whatever_its_size(sizes):
    """Every query gets a slot of its own, in a chunk of its cluster, within the data-independent
    number of chunks, even for the worst split of 40 queries into 5 clusters (chunks of 8)."""
    n, clusters, size = sum(sizes), len(sizes), 8
    gen = torch.Generator().manual_seed(0)
    query_cluster = torch.repeat_interleave(torch.arange(clusters), torch.tensor(sizes))
    query_cluster = query_cluster[torch.randperm(n, generator=gen)].view(1, 1, n)
    slot, chunk_cluster = chunk_slots(query_cluster, clusters, size)
    assert chunk_cluster.shape[-1] == (n + clusters * (size - 1)) // size == 9
    assert len(slot.unique()) == n and slot.max() < chunk_cluster.shape[-1] * size
    assert torch.equal(chunk_cluster.gather(-1, slot // size), query_cluster)
    for cluster in range(clusters):  # in order of position within their cluster
        assert (slot[query_cluster == cluster].diff() > 0).all()


def test_hand_written_backward_is_the_gradient():
    """Against numerical gradients with masked keys, and against autograd with the same dropout."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 4, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 3, 6, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    mask = torch.rand(2, 3, 1, 6, generator=gen) > 0.4
    mask[..., 0] = True  # at least one key per chunk, as the layout guarantees
    assert not mask.all()
    assert torch.autograd.gradcheck(lambda *heads: chunk_attention(*heads, mask, 0.0), (q, k, v))

    def written_out(q, k, v):
        probs = (q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~mask, float("-inf")).softmax(-1)
        return (probs * dropout_keep(probs, 0.5)) @ v

    grads = []
    for attention in (lambda *heads: chunk_attention(*heads, mask, 0.5), written_out):
        torch.manual_seed(0)
        out = attention(q, k, v)
        grads.append(torch.autograd.grad((out**2).sum(), (q, k, v)))
    for ours, expected in zip(*grads):
        assert torch.allclose(ours, expected, atol=1e-12)


def test_online_kmeans_moves_centroids_to_the_mean_of_their_real_vectors():
    q, k, _, mask = random_heads(dtype=torch.float64)
    attn = build(window=8, decay=0.75).train()
    before = attn.centroids.clone()
    query_cluster, _ = attn.route(q, k, mask)
    assert torch.equal(attn.centroids, before)  # a forward only collects; the update follows the optimizer step
    attn.on_train_step()
    vectors = F.normalize(torch.cat([q, k], dim=2), dim=-1)
    similarity = torch.einsum("bhnd,hcd->bhnc", vectors, before)
    assigned = similarity.argmax(-1)
    real = torch.cat([mask, mask], dim=1)[:, None].expand_as(assigned)
    assert torch.equal(assigned[..., :37], query_cluster)
    for head in range(2):
        for cluster in range(5):
            members = vectors[:, head][(assigned[:, head] == cluster) & real[:, head]]
            target = members.mean(0) if len(members) else before[head, cluster]
            moved = F.normalize(0.75 * before[head, cluster] + 0.25 * target, dim=-1)
            assert torch.allclose(attn.centroids[head, cluster], moved, atol=1e-12)
    # padding plays no part, and eval never moves them
    noisy = [torch.where(mask[:, None, :, None], x, 50 * torch.randn_like(x)) for x in (q, k)]
    again = build(window=8, decay=0.75).train()
    again.centroids.copy_(before)
    for part in (slice(0, 1), slice(1, None)):  # two micro-batches of one step: one update
        again.route(*(x[part] for x in noisy), mask[part])
    again.on_train_step()
    assert torch.allclose(again.centroids, attn.centroids, atol=1e-12)
    frozen = attn.centroids.clone()
    attn.eval()(q, k, q, mask)
    assert torch.equal(attn.centroids, frozen)


def scattered_clusters(length=256, clusters=4, dim=16, norm=6.0, seed=0):
    """q = k in `clusters` tight, equal clusters of directions at random positions (so attention
    is far from local), their centres, and randn values."""
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, dim, generator=gen, dtype=torch.float64), dim=-1)
    which = torch.stack([torch.randperm(length, generator=gen) % clusters for _ in range(2)])[None]
    noise = 0.05 * torch.randn(1, 2, length, dim, generator=gen, dtype=torch.float64)
    q = norm * F.normalize(centres[which] + noise, dim=-1)
    return q, centres, torch.randn(1, 2, length, dim, generator=gen, dtype=torch.float64)


def test_routing_reaches_similar_tokens_anywhere():
    """With a centroid on each of 4 scattered clusters of 64 tokens, clusters of 64 keys recover
    exact attention, where a local window of the same budget does not."""
    q, centres, v = scattered_clusters()
    exact = softmax_attention(q, q, v)
    trivial = (v.mean(-2, keepdim=True) - exact).norm() / exact.norm()
    attn = build(max_len=256, window=64)
    attn.centroids.copy_(centres.expand(2, -1, -1))
    routed = (attn(q, q, v) - exact).norm() / exact.norm()
    local = build_attention("local", num_heads=2, head_dim=16, max_len=256, window=32)
    local_error = (local(q, q, v) - exact).norm() / exact.norm()
    assert trivial > 0.8
    assert routed < 0.01 * trivial, (routed, trivial)
    assert local_error > 0.6 * trivial, local_error


def test_online_kmeans_finds_the_clusters_from_a_random_start():
    q, _, _ = scattered_clusters()
    torch.manual_seed(0)
    attn = build(max_len=256, window=64, decay=0.5).train()

    def fit():  # mean similarity of the unit vectors to their nearest centroid
        return torch.einsum("bhnd,hcd->bhnc", F.normalize(q, dim=-1), attn.centroids).amax(-1).mean()

    start = fit()
    for _ in range(10):
        attn.route(q, q, None)
        attn.on_train_step()
    assert start < 0.6 and fit() > 0.8, (start, fit())


def test_cost_is_n_times_cluster_size():
    """No tensor beyond 1.5 n * w elements (w = n / c): queries in chunks of w / 2, n + c * w / 2
    slots at most, each scoring w keys; here n = 2048, c = 16, w = 128."""
    n = 2048
    attn = build_attention("routing", num_heads=1, head_dim=8, max_len=n, window=128).train()
    q, k, v = (torch.randn(1, 1, n, 8, requires_grad=True) for _ in range(3))
    mask = torch.arange(n)[None] < n - 100
    with LargestTensor() as tracker:
        attn(q, k, v, mask).sum().backward()
    assert tracker.largest <= 1.5 * n * 128, tracker.largest  # full attention: n * n, 10x more


@pytest.mark.parametrize("training", [False, True])
def test_one_graph_under_bf16_autocast(training):
    """No graph break on a padded batch: no .item(), nonzero or boolean indexing; every shape comes
    from the padded length and max_len, never from the routing."""
    q, k, v, mask = random_heads()
    attn = build_attention("routing", num_heads=2, head_dim=16, max_len=37, window=8).train(training)
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(attn)(q, k, v, mask)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_bad_settings_name_the_key():
    with pytest.raises(LRAError, match="model.attention.window=0: must be at least 1"):
        build(window=0)
    with pytest.raises(LRAError, match=r"model.attention.decay=1.0: must be in \[0, 1\)"):
        build(decay=1.0)
