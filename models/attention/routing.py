"""Routing attention (Roy et al., 2021, "Efficient Content-Based Sparse Attention with Routing
Transformers"): queries attend the keys of their cluster, clusters found by online k-means.

Each layer keeps c = ceil(max_len / window) unit-length centroids per head. Queries and keys are
routed by their unit-length directions (the attention itself uses them unnormalised):

- keys, balanced: every centroid takes its w = min(window, n) nearest real keys (a key may serve
  several clusters or none), so every cluster has exactly w keys, n / c at the model's length;
- queries: each goes to its nearest centroid and attends that cluster's w keys, so each query sees
  w keys and the cost is n * w = O(n * n / c) whatever the clusters' sizes.

w depends on the window and never on how much padding follows the real tokens (a cluster holds all
real keys, or w of them, either way), so a padded sample gives its unpadded output.

In training the centroids follow the routed vectors by an exponential moving average: after each
optimizer step (`on_train_step`) each moves `1 - decay` of the way to the mean of the real queries
and keys routed to it since the last step, then is normalised (the paper's online k-means; its
commitment loss is not used). Forward passes only add to those sums, so the micro-batches of an
accumulated step count as one batch, and a forward recomputed in the backward pass (reversible
layers) adds the same vectors twice without moving the mean. With one centroid this is exact
attention.

Layout: the queries are placed in chunks of s = w / 2, a cluster's queries filling whole chunks of
their own, and each chunk attends its cluster's w keys, gathered for it. Only each cluster's last
chunk can be partly empty, so n + c * (s - 1) query slots always suffice (1.5 n at the model's
length, where c * w = max_len): shapes fixed by n and max_len, never by the routing, and time and
memory O((n + max_len / 2) * w), linear in n. Half a cluster balances the empty slots against the
key gathers and the efficiency of small matrix products (chunks of w would need up to 2 n slots).
Rows move by index_select (the gathers) and index_copy (placing the queries), whose backward passes
are cheap on CPU, and the attention within the chunks has its backward written out (ChunkAttention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from lra.config import AttentionConfig, at_least, between
from models.attention import Attention, register_attention


@dataclass
class RoutingAttentionConfig(AttentionConfig):
    name: str = "routing"
    window: int = field(default=64, metadata=at_least(1))
    decay: float = field(default=0.999, metadata=between(0, 1, high_open=True))  # of the k-means centroids


@register_attention(RoutingAttentionConfig)
class RoutingAttention(Attention):
    """Each query attends the w keys of its nearest centroid's balanced cluster."""

    linear_memory = True

    def __init__(self, config: RoutingAttentionConfig, *, num_heads: int, head_dim: int, max_len: int) -> None:
        super().__init__()
        self.window = config.window
        self.decay = config.decay
        self.dropout = config.dropout
        clusters = math.ceil(max_len / config.window)
        self.register_buffer("centroids", F.normalize(torch.randn(num_heads, clusters, head_dim), dim=-1))
        # What the next k-means update averages: sums and counts of the vectors routed to each centroid.
        self.register_buffer("routed_sums", torch.zeros(num_heads, clusters, head_dim), persistent=False)
        self.register_buffer("routed_counts", torch.zeros(num_heads, clusters, 1), persistent=False)

    @torch.no_grad()
    def route(
        self, q: torch.Tensor, k: torch.Tensor, real: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The nearest centroid of every query (batch, heads, n) and the w keys of every cluster
        (batch, heads, c, w), nearest first; in training, the routed vectors are added to the sums
        of the next k-means update."""
        with torch.autocast(q.device.type, enabled=False):
            centroids = self.centroids.float().transpose(-1, -2)  # (heads, d, c)
            queries, keys = (F.normalize(x.float(), dim=-1) for x in (q, k))
            query_cluster = torch.matmul(queries, centroids).argmax(dim=-1)
            key_similarity = torch.matmul(keys, centroids).transpose(-1, -2)  # (batch, heads, c, n)
            if real is not None:
                key_similarity = key_similarity.masked_fill(~real[:, None, None, :], float("-inf"))
            per_cluster = min(self.window, q.shape[2])
            cluster_keys = key_similarity.topk(per_cluster, dim=-1).indices
            if self.training:
                self.collect(queries, query_cluster, real)
                self.collect(keys, key_similarity.argmax(dim=2), real)
        return query_cluster, cluster_keys

    def collect(self, vectors: torch.Tensor, assigned: torch.Tensor, real: Optional[torch.Tensor]) -> None:
        """Add the real unit vectors (batch, heads, n, d) to the sums of their `assigned` centroids
        (batch, heads, n); padded ones go to a spare row that is dropped."""
        heads, clusters, dim = self.centroids.shape
        rows = assigned + torch.arange(0, heads * clusters, clusters, device=assigned.device).view(1, heads, 1)
        if real is not None:
            rows = rows.masked_fill(~real[:, None, :], heads * clusters)
        rows = rows.flatten()
        sums = vectors.new_zeros(heads * clusters + 1, dim).index_add_(0, rows, vectors.reshape(-1, dim))
        counts = vectors.new_zeros(heads * clusters + 1).index_add_(0, rows, vectors.new_ones(rows.shape))
        self.routed_sums += sums[:-1].view(heads, clusters, dim)
        self.routed_counts += counts[:-1].view(heads, clusters, 1)

    @torch.no_grad()
    def on_train_step(self) -> None:
        """The k-means update: each centroid moves towards the mean of what was routed to it."""
        counts = self.routed_counts
        means = torch.where(counts > 0, self.routed_sums / counts.clamp(min=1), self.centroids)
        self.centroids.copy_(F.normalize(self.decay * self.centroids + (1 - self.decay) * means, dim=-1))
        self.routed_sums.zero_()
        self.routed_counts.zero_()

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        batch, heads, n, dim = q.shape
        query_cluster, cluster_keys = self.route(q, k, key_padding_mask)
        per_cluster = cluster_keys.shape[-1]
        size = query_chunk_size(per_cluster)
        # Queries in chunks of `size`, each cluster's queries filling chunks of their own; each chunk
        # attends the keys of its cluster, chunk_keys (batch, heads, chunks * w).
        slot, chunk_cluster = chunk_slots(query_cluster, self.centroids.shape[1], size)
        chunks = chunk_cluster.shape[-1]
        chunk_keys = cluster_keys.gather(2, chunk_cluster[..., None].expand(-1, -1, -1, per_cluster)).flatten(2)
        queries = place_rows(q, slot, chunks * size).view(batch, heads * chunks, size, dim)
        keys, values = (select_rows(x, chunk_keys).view(batch, heads * chunks, per_cluster, dim) for x in (k, v))
        mask = None
        if key_padding_mask is not None:
            mask = chunk_key_mask(key_padding_mask, chunk_keys).view(batch, heads * chunks, 1, per_cluster)
        out = chunk_attention(queries, keys, values, mask, self.dropout if self.training else 0.0)
        return select_rows(out.view(batch, heads, chunks * size, dim), slot)


def query_chunk_size(per_cluster: int) -> int:
    """Queries per chunk: half a cluster's keys. Each cluster's last chunk may be partly empty, so
    smaller chunks waste fewer slots (n + c * (size - 1) in all), but they gather a cluster's keys
    once per chunk and multiply smaller matrices; half is about the fastest on CPU."""
    return max(1, per_cluster // 2)


def chunk_slots(query_cluster: torch.Tensor, clusters: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each query sits when the queries of each of `clusters` clusters fill whole chunks of
    `size` of their own, in order of position: its slot (batch, heads, n), and the cluster of every
    chunk (batch, heads, chunks; 0 for an unused chunk). The number of chunks is a bound that does
    not depend on the data, (n + min(clusters, n) * (size - 1)) // size."""
    batch, heads, n = query_cluster.shape
    chunks = (n + min(clusters, n) * (size - 1)) // size
    counts = torch.zeros(batch, heads, clusters, dtype=torch.long, device=query_cluster.device)
    counts.scatter_add_(-1, query_cluster, torch.ones_like(query_cluster))
    chunks_before = (counts + size - 1) // size
    chunks_before = chunks_before.cumsum(dim=-1) - chunks_before  # first chunk of each cluster
    order = query_cluster.argsort(dim=-1, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(n, device=order.device).expand_as(order))
    queries_before = counts.cumsum(dim=-1) - counts
    within = rank - queries_before.gather(-1, query_cluster)  # place of each query in its cluster
    slot = chunks_before.gather(-1, query_cluster) * size + within
    chunk_cluster = torch.zeros(batch, heads, chunks, dtype=torch.long, device=query_cluster.device)
    chunk_cluster.scatter_(-1, slot // size, query_cluster)
    return slot, chunk_cluster


def flat_rows(index: torch.Tensor, length: int) -> torch.Tensor:
    """Positions `index` (batch, heads, m) along a dimension of `length` as rows of the tensor with
    batch and heads flattened into that dimension: (batch * heads * m,)."""
    batch, heads = index.shape[:2]
    offsets = torch.arange(0, batch * heads * length, length, device=index.device).view(batch, heads, 1)
    return (index + offsets).flatten()


def select_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (batch, heads, n, dim) at the positions `index` (batch, heads, m): (batch, heads, m, dim).
    One index_select of whole rows, whose backward (index_add) is several times faster than that of
    advanced indexing (index_put) or of an expanded gather on CPU."""
    batch, heads, n, dim = x.shape
    rows = x.reshape(batch * heads * n, dim).index_select(0, flat_rows(index, n))
    return rows.view(batch, heads, index.shape[-1], dim)


def place_rows(x: torch.Tensor, index: torch.Tensor, length: int) -> torch.Tensor:
    """x (batch, heads, n, dim) placed at the distinct positions `index` (batch, heads, n) of zeros
    (batch, heads, length, dim); its backward is an index_select."""
    batch, heads, n, dim = x.shape
    placed = x.new_zeros(batch * heads * length, dim).index_copy(0, flat_rows(index, length), x.reshape(-1, dim))
    return placed.view(batch, heads, length, dim)


def chunk_key_mask(real: torch.Tensor, chunk_keys: torch.Tensor) -> torch.Tensor:
    """Which keys of each chunk (batch, heads, chunks * w) are real. Every cluster holds a real key
    of a sample that has one, so padded queries and unused slots attend real keys; in a sample
    without any real token every key counts, so that no query is left without a key."""
    batch, heads = chunk_keys.shape[:2]
    key_real = real.gather(1, chunk_keys.flatten(1)).view(batch, heads, -1)
    return key_real | ~real.any(dim=1)[:, None, None]


def chunk_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], dropout: float
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v within each chunk (q: (..., s, d); k, v: (..., w, d)), over the
    keys where `mask` (..., 1, w) is True, at least one per chunk; dropout on the probabilities."""
    return ChunkAttention.apply(q, k, v, mask, dropout)


class ChunkAttention(torch.autograd.Function):
    """Attention written out, with its backward by hand. On CPU, scaled_dot_product_attention with
    dropout takes the same math path plus a guard for fully masked rows that a chunk never has; and
    autograd's gradient of k would come out of q^T dS as a transposed view, which the gather of the
    keys then copies: here every gradient is a matrix product laid out as its input."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        mask: Optional[torch.Tensor], dropout: float,
    ) -> torch.Tensor:
        scale = q.shape[-1] ** -0.5
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)  # under autocast, in its dtype
        if mask is not None:
            scores.masked_fill_(~mask, float("-inf"))
        probs = scores.softmax(dim=-1)
        keep = dropout_keep(probs, dropout) if dropout > 0 else None
        kept = probs if keep is None else probs * keep
        ctx.save_for_backward(q, k, v, probs, keep, kept)
        ctx.scale, ctx.dtype = scale, scores.dtype
        return torch.matmul(kept, v)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None]:
        q, k, v, probs, keep, kept = ctx.saved_tensors
        dtype = ctx.dtype  # the products' dtype: the forward's (autocast's), whatever the inputs'
        grad = grad.to(dtype)
        grad_v = torch.matmul(kept.to(dtype).transpose(-1, -2), grad)
        grad_probs = torch.matmul(grad, v.to(dtype).transpose(-1, -2)).to(probs.dtype)
        if keep is not None:
            grad_probs.mul_(keep)
        # softmax's backward: p * (g - sum(g * p)), scaled as the scores were
        grad_scores = grad_probs.sub_((grad_probs * probs).sum(dim=-1, keepdim=True)).mul_(probs).mul_(ctx.scale)
        grad_scores = grad_scores.to(dtype)
        grad_q = torch.matmul(grad_scores, k.to(dtype))
        grad_k = torch.matmul(grad_scores.transpose(-1, -2), q.to(dtype))
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), None, None


def dropout_keep(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout's multiplier: 1 / (1 - p) with probability 1 - p, else 0. On CPU drawn from uniform
    numbers, about twice as fast as the Bernoulli draws of F.dropout there."""
    if probs.device.type != "cpu":
        return torch.empty_like(probs).bernoulli_(1 - p).div_(1 - p)
    return torch.rand_like(probs).ge_(p).div_(1 - p)
