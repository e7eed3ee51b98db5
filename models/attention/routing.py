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
attention. Queries are laid out for the attention call in chunks of w, a cluster's queries filling
whole chunks of their own: at most n / w + c chunks, so memory is O((n + max_len) * w), linear in n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from lra.config import AttentionConfig
from models.attention import Attention, check_config, register_attention


@dataclass
class RoutingAttentionConfig(AttentionConfig):
    name: str = "routing"
    window: int = 64
    decay: float = 0.999


@register_attention(RoutingAttentionConfig)
class RoutingAttention(Attention):
    """Each query attends the w keys of its nearest centroid's balanced cluster."""

    linear_memory = True

    def __init__(self, config: RoutingAttentionConfig, *, num_heads: int, head_dim: int, max_len: int) -> None:
        super().__init__()
        check_config(config.window >= 1, "window", f"must be positive, got {config.window}")
        check_config(0 <= config.decay < 1, "decay", f"must be in [0, 1), got {config.decay}")
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
            centroids = self.centroids.float()
            queries, keys = (F.normalize(x.float(), dim=-1) for x in (q, k))
            query_similarity = torch.einsum("bhnd,hcd->bhnc", queries, centroids)
            key_similarity = torch.einsum("bhnd,hcd->bhcn", keys, centroids)
            if real is not None:
                key_similarity = key_similarity.masked_fill(~real[:, None, None, :], float("-inf"))
            per_cluster = min(self.window, q.shape[2])
            query_cluster = query_similarity.argmax(dim=-1)
            cluster_keys = key_similarity.topk(per_cluster, dim=-1).indices
            if self.training:
                self.collect(queries, query_cluster, keys, key_similarity.argmax(dim=2), real)
        return query_cluster, cluster_keys

    def collect(
        self, queries: torch.Tensor, query_cluster: torch.Tensor, keys: torch.Tensor, key_cluster: torch.Tensor,
        real: Optional[torch.Tensor],
    ) -> None:
        """Add the real unit queries and keys to the sums of the centroids nearest to them."""
        vectors, assigned = torch.cat([queries, keys], dim=2), torch.cat([query_cluster, key_cluster], dim=2)
        real = torch.ones_like(assigned, dtype=torch.bool) if real is None else real.repeat(1, 2)[:, None]
        weight = real.expand_as(assigned).to(vectors.dtype)
        clusters = self.centroids.shape[1]
        sums = vectors.new_zeros(*assigned.shape[:2], clusters, vectors.shape[-1])
        sums.scatter_add_(2, assigned[..., None].expand_as(vectors), vectors * weight[..., None])
        counts = weight.new_zeros(*assigned.shape[:2], clusters).scatter_add_(2, assigned, weight)
        self.routed_sums += sums.sum(dim=0)  # over the batch: (heads, c, d)
        self.routed_counts += counts.sum(dim=0)[..., None]

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
        clusters = self.centroids.shape[1]
        real = key_padding_mask
        query_cluster, cluster_keys = self.route(q, k, real)
        per_cluster = cluster_keys.shape[-1]
        pairs = torch.arange(batch * heads, device=q.device).view(batch, heads, 1)  # (sample, head) index

        # Queries in chunks of w: cluster by cluster, each cluster starting a new chunk; each chunk
        # attends the keys of its cluster, chunk_keys (batch, heads, chunks, w).
        slot, chunk_cluster, chunks = chunk_slots(query_cluster, clusters, per_cluster)
        chunk_keys = cluster_keys.gather(2, chunk_cluster[..., None].expand(-1, -1, -1, per_cluster))
        key_rows = (pairs[..., None] * n + chunk_keys).flatten()
        keys, values = (x.reshape(-1, dim)[key_rows].view(batch, heads * chunks, per_cluster, dim) for x in (k, v))
        query_rows = (pairs * chunks * per_cluster + slot).flatten()
        queries = q.new_zeros(batch * heads * chunks * per_cluster, dim).index_copy(0, query_rows, q.reshape(-1, dim))
        mask = None
        if real is not None:
            key_real = real.gather(1, chunk_keys.flatten(1)).view(batch, heads, chunks, 1, per_cluster)
            query_real = real.new_zeros(batch * heads * chunks * per_cluster).index_copy(
                0, query_rows, real[:, None].expand(-1, heads, -1).flatten()
            ).view(batch, heads, chunks, per_cluster, 1)
            mask = (key_real | ~query_real).flatten(1, 2)  # padded (and empty) slots attend all: no empty row
        out = F.scaled_dot_product_attention(
            queries.view(batch, heads * chunks, per_cluster, dim), keys, values,
            attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
        )
        return out.reshape(-1, dim)[query_rows].view(batch, heads, n, dim)


def chunk_slots(query_cluster: torch.Tensor, clusters: int, size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Where each query sits when the queries of each of `clusters` clusters fill whole chunks of
    `size` of their own, in order of position: its slot (batch, heads, n), the cluster of every chunk
    (batch, heads, chunks; 0 for an unused chunk) and the number of chunks, ceil(n / size) + clusters,
    a bound that does not depend on the data."""
    batch, heads, n = query_cluster.shape
    chunks = math.ceil(n / size) + clusters
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
    return slot, chunk_cluster, chunks
