"""LSH attention (Reformer, Kitaev et al., 2020): attend within buckets of similar vectors.

Keys are the queries, normalised to unit length (shared QK), so a query is most similar to itself;
a token attends to itself only when nothing else is available. Each of `n_hashes` rounds hashes
the vectors by a random rotation R (bucket = argmax over [xR, -xR]), sorts positions by
(bucket, position), cuts the sorted sequence into chunks of `bucket_size`, and lets each chunk
attend to itself and to the previous chunk (the first chunk to the last chunk holding a real
token). Outputs are unsorted and the rounds combined with weights softmax(logsumexp of each
round's scores), which is the softmax over the union of the keys every round saw (duplicates
counted once per round).

Padding never reaches real outputs, and the padded length of a batch never changes them: the
number of buckets comes from max_len (rounded up to a multiple of 2 * bucket_size), as if every
input were padded to max_len, so a token's bucket depends on its vector alone. Padded positions
(the caller's and the ones added to make the length a multiple of 2 * bucket_size) get a bucket
of their own sorted after every real one, so the real tokens fill the first sorted slots in the
same order whatever the padding holds or however long it is, and padded keys are masked in the
scores. The first chunk's wrap-around goes to the last chunk with a real token, not the last
chunk of the padded length (which, padded further, would hold padding instead).

Memory is linear in length: scores are (chunks, bucket_size, 2 * bucket_size) per round. The
transient rotated vectors of the hash are length x n_buckets / 2 per round (length x max_len / 128
with the default bucket size); they are built without autograd and freed before the attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from lra.config import AttentionConfig, at_least
from models.attention import Attention, register_attention
from models.attention.masking import mask_scores

# The self logit, replacing q.q/|q|: far below any other logit (|q.k/|k|| <= |q|), yet finite in
# fp16/bf16, so a token whose window holds no other real key attends to itself.
SELF_LOGIT = -5e4


@dataclass
class LSHAttentionConfig(AttentionConfig):
    name: str = "lsh"
    bucket_size: int = field(default=64, metadata=at_least(1))
    n_hashes: int = field(default=1, metadata=at_least(1))  # rounds of hashing
    redraw: bool = True


def hash_buckets(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Angular LSH of `x` (..., length, dim) by `rotations` (rounds, dim, n_buckets / 2):
    the bucket argmax([xR, -xR]) of every vector in every round, shape (..., rounds, length).

    Computed as the larger of max(xR) and max(-xR) = -min(xR), without building [xR, -xR], and
    in the dtype of `x` even under autocast, so that buckets do not depend on autocast.
    """
    with torch.autocast(x.device.type, enabled=False):
        rotated = torch.einsum("...nd,rdk->...rnk", x, rotations.to(x.dtype))
    top, top_index = rotated.max(dim=-1)
    bottom, bottom_index = rotated.min(dim=-1)
    return torch.where(top >= -bottom, top_index, bottom_index + rotations.shape[-1])


def padded_length(length: int, bucket_size: int) -> int:
    """`length` rounded up to a multiple of 2 * bucket_size, so that n_buckets is even."""
    block = 2 * bucket_size
    return -(-length // block) * block


@register_attention(LSHAttentionConfig)
class LSHAttention(Attention):
    """Reformer's shared-QK LSH attention; `k` is ignored (keys are the normalised queries)."""

    shared_qk = True
    linear_memory = True

    def __init__(self, config: LSHAttentionConfig, *, num_heads: int, head_dim: int, max_len: int) -> None:
        super().__init__()
        self.bucket_size = config.bucket_size
        self.n_hashes = config.n_hashes
        self.redraw = config.redraw
        self.dropout = config.dropout
        self.max_len = max_len
        # The same bucket count at every length (that of max_len), so a token's bucket never depends
        # on how far its batch is padded. Fixed rotations are used in eval, and in training unless redrawn.
        self.n_buckets = padded_length(max_len, self.bucket_size) // self.bucket_size
        self.register_buffer("rotations", torch.randn(self.n_hashes, head_dim, self.n_buckets // 2))

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        batch, heads, length, dim = q.shape
        if length > self.max_len:
            raise ValueError(f"sequence of {length} exceeds the attention's max_len {self.max_len}")
        padded = padded_length(length, self.bucket_size)
        real = key_padding_mask
        if padded != length:
            q, v = (F.pad(x, (0, 0, 0, padded - length)) for x in (q, v))
            real = q.new_ones(batch, length, dtype=torch.bool) if real is None else real
            real = F.pad(real, (0, padded - length), value=False)
        order = self.sort_order(q, real)
        real_count = None if real is None else real.sum(dim=-1)
        out = self.chunked_attention(q, v, order, real_count)
        return out[:, :, :length]

    @torch.no_grad()
    def sort_order(self, q: torch.Tensor, real: Optional[torch.Tensor]) -> torch.Tensor:
        """Positions sorted by (bucket, position) in every round: (batch, heads, rounds, length).

        `length` is a multiple of 2 * bucket_size; `real` (batch, length) is True at real tokens,
        or None. Padded positions get bucket n_buckets, so they sort after every real one. Redrawn
        rotations have the shape of the fixed ones, so the draw does not depend on the length either.
        """
        if self.training and self.redraw:
            rotations = torch.randn(self.rotations.shape, device=q.device, dtype=self.rotations.dtype)
        else:
            rotations = self.rotations
        buckets = hash_buckets(q, rotations)
        if real is not None:
            buckets = buckets.masked_fill(~real[:, None, None, :], self.n_buckets)
        return buckets.sort(dim=-1, stable=True).indices

    def chunked_attention(
        self, q: torch.Tensor, v: torch.Tensor, order: torch.Tensor, real_count: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Attention of every sorted chunk to itself and its predecessor, unsorted and combined.

        Layout: the sorted rows of each (sample, head, round) are gathered as one block preceded
        by a copy of the chunk its first chunk wraps around to (`wrapped_chunk`); all blocks laid
        end to end, windows of two chunks with a stride of one chunk are views (`unfold`), window w
        serving the queries of chunk w + 1. The windows whose query chunk is such a copy are
        computed and never read.
        """
        batch, heads, length, dim = q.shape
        size, rounds = self.bucket_size, self.n_hashes
        with torch.no_grad():
            count = q.new_full((batch,), length, dtype=torch.long) if real_count is None else real_count
            wrap = wrapped_chunk(count, size)
            rows = _sorted_rows(order, wrap, size)
            unsort = _unsorted_rows(order, size)
        sorted_q = q.reshape(-1, dim)[rows]
        sorted_v = v.reshape(-1, dim)[rows]
        keys = F.normalize(sorted_q, dim=-1).unfold(0, 2 * size, size)  # (windows, dim, 2 * size)
        values = sorted_v.unfold(0, 2 * size, size).transpose(1, 2)  # (windows, 2 * size, dim)
        queries = sorted_q[size:].view(-1, size, dim)
        scores = queries @ keys  # (windows, size, 2 * size): [previous chunk, own chunk]
        scores.diagonal(offset=size, dim1=1, dim2=2).fill_(SELF_LOGIT)
        if real_count is not None:
            scores = mask_scores(scores, _real_keys(real_count, wrap, heads, rounds, length, size)[:, None, :])
        probs = F.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
        out = (probs @ values).view(-1, dim)[unsort].view(batch, heads, rounds, length, dim)
        if rounds == 1:
            return out[:, :, 0]
        lse = scores.logsumexp(dim=-1).view(-1)[unsort].view(batch, heads, rounds, length, 1)
        return (out * lse.softmax(dim=2)).sum(dim=2)


def wrapped_chunk(real_count: torch.Tensor, size: int) -> torch.Tensor:
    """(batch,) the sorted chunk that the first chunk of each sample attends as its previous one:
    the last chunk holding a real token, c - 1 for c = ceil(real_count / size) chunks, or chunk 1
    when only the first does (then padding, masked: the padded length holds at least two chunks).

    Real tokens fill the first sorted slots, so this chunk is the same however far the sample is
    padded; without padding it is the last chunk.
    """
    chunks = (real_count + size - 1) // size
    return (chunks - 1).clamp(min=1)


def _sorted_rows(order: torch.Tensor, wrap: torch.Tensor, size: int) -> torch.Tensor:
    """Row indices into (batch * heads * length, dim) of the sorted layout `chunked_attention`
    describes: per (sample, head, round), its sorted chunk `wrap` (per sample), then all sorted
    positions."""
    batch, heads, rounds, length = order.shape
    copied = (wrap.view(batch, 1, 1, 1) * size + torch.arange(size, device=order.device)).expand(-1, heads, rounds, -1)
    wrapped = torch.cat([order.gather(-1, copied), order], dim=-1)
    offsets = torch.arange(batch * heads, device=order.device).view(batch, heads, 1, 1) * length
    return (wrapped + offsets).flatten()


def _unsorted_rows(order: torch.Tensor, size: int) -> torch.Tensor:
    """Row indices into the window outputs (chunks after the first, flattened) of every
    (sample, head, round, position) in original order: the inverse permutation of `order`."""
    length = order.shape[-1]
    positions = torch.arange(length, device=order.device).expand_as(order)
    inverse = torch.empty_like(order).scatter_(-1, order, positions)
    blocks = torch.arange(order[..., 0].numel(), device=order.device).view(order.shape[:-1] + (1,))
    return (inverse + blocks * (length + size)).flatten()


def _real_keys(
    real_count: torch.Tensor, wrap: torch.Tensor, heads: int, rounds: int, length: int, size: int
) -> torch.Tensor:
    """(windows, 2 * size) bool: which keys of each window are real. Real tokens fill the first
    real_count sorted slots of every round, so this needs no gather."""
    copied = wrap[:, None] * size + torch.arange(size, device=wrap.device)
    slots = torch.cat([copied, torch.arange(length, device=wrap.device).expand(len(wrap), -1)], dim=-1)
    real = (slots < real_count[:, None])[:, None, None, :].expand(-1, heads, rounds, -1)
    return real.flatten().unfold(0, 2 * size, size)
