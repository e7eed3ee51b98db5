"""Sparse Sinkhorn attention (Tay et al., 2020, "Sparse Sinkhorn Attention").

The sequence, padded to whole blocks of `block` tokens, is cut into blocks. A sort net (one linear
layer from a key block's summed keys to logits over the block slots, shared by the heads) scores
where each key block should go; `sinkhorn_iters` rounds of Sinkhorn normalisation at `temperature`
(rows, then columns, in log space) turn the scores into P, a doubly stochastic matrix: a soft,
learned permutation of the blocks. Query block l then attends, in one softmax, the keys of its own
block and those of its sorted block sum_n P[n, l] K_n (values alike).

With one block the sorted block is the block itself: every key counted twice, which leaves the
softmax unchanged, so this is exact attention. Time and memory: 2 * block keys per query plus the
(n / block)^2 sort, linear in n while n / block stays below about block.

Padding: keys and values are zeroed at padding before they are pooled and mixed, so padded values
never reach real outputs. P never sends a block holding a real token to the slot of a block without
one, nor the reverse, and a sorted key is masked where no real key is mixed into it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lra.config import AttentionConfig, above, at_least
from lra.errors import LRAError
from models.attention import Attention, register_attention
from models.attention.lowrank import zero_padding


@dataclass
class SinkhornAttentionConfig(AttentionConfig):
    name: str = "sinkhorn"
    block: int = field(default=64, metadata=at_least(1))
    sinkhorn_iters: int = field(default=8, metadata=at_least(1))
    temperature: float = field(default=0.75, metadata=above(0))


def sinkhorn(logits: torch.Tensor, iterations: int) -> torch.Tensor:
    """exp of `logits` (..., n, n) after `iterations` rounds of normalising its rows, then its columns,
    in log space; -inf entries stay 0. Every row and column needs one finite entry."""
    for _ in range(iterations):
        logits = logits - logits.logsumexp(dim=-1, keepdim=True)
        logits = logits - logits.logsumexp(dim=-2, keepdim=True)
    return logits.exp()


@register_attention(SinkhornAttentionConfig)
class SinkhornAttention(Attention):
    """Own block plus the Sinkhorn-sorted block, for every block of queries."""

    linear_memory = True

    def __init__(self, config: SinkhornAttentionConfig, *, num_heads: int, head_dim: int, max_len: int) -> None:
        super().__init__()
        self.block = config.block
        self.iterations = config.sinkhorn_iters
        self.temperature = config.temperature
        self.dropout = config.dropout
        self.max_blocks = math.ceil(max_len / self.block)
        self.sort_net = nn.Linear(head_dim, self.max_blocks)  # summed keys of a block -> logits over slots

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        batch, heads, n, dim = q.shape
        num_blocks = math.ceil(n / self.block)
        if num_blocks > self.max_blocks:
            raise LRAError(f"sinkhorn: sequence length {n} exceeds its max_len (the sort net has {self.max_blocks} slots)")
        padded = num_blocks * self.block
        real = key_padding_mask
        if real is None and padded > n:
            real = torch.ones(batch, n, dtype=torch.bool, device=q.device)
        if real is not None:
            real = F.pad(real, (0, padded - n), value=False)
        k, v = zero_padding(k, key_padding_mask), zero_padding(v, key_padding_mask)
        q, k, v = (F.pad(x, (0, 0, 0, padded - n)) for x in (q, k, v))
        blocks = (batch, heads, num_blocks, self.block, dim)
        query_blocks, key_blocks, value_blocks = (x.reshape(blocks) for x in (q, k, v))

        perm = self.permutation(key_blocks, real)  # (batch, heads, key block n, slot l)
        keys = torch.cat([key_blocks, torch.einsum("bhnl,bhnsd->bhlsd", perm, key_blocks)], dim=3)
        values = torch.cat([value_blocks, torch.einsum("bhnl,bhnsd->bhlsd", perm, value_blocks)], dim=3)
        mask = None
        if real is not None:
            real_blocks = real.view(batch, num_blocks, self.block)
            sorted_real = torch.einsum("bhnl,bns->bhls", perm, real_blocks.to(perm.dtype)) > 0
            key_real = torch.cat([real_blocks[:, None].expand(-1, heads, -1, -1), sorted_real], dim=-1)
            # A padded query attends every key of its pattern, so that no row is fully masked.
            mask = (key_real[:, :, :, None, :] | ~real_blocks[:, None, :, :, None]).flatten(1, 2)
        out = F.scaled_dot_product_attention(
            query_blocks.flatten(1, 2), keys.flatten(1, 2), values.flatten(1, 2),
            attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
        )
        return out.view(batch, heads, padded, dim)[:, :, :n]

    def permutation(self, key_blocks: torch.Tensor, real: Optional[torch.Tensor]) -> torch.Tensor:
        """P (batch, heads, num_blocks, num_blocks): the weight of key block n in slot l, every row and
        column summing to 1 (among blocks of their kind: with a real token, or all padding).
        Computed in fp32, also under autocast."""
        batch, _, num_blocks, block, _ = key_blocks.shape
        with torch.autocast(key_blocks.device.type, enabled=False):
            weight, bias = self.sort_net.weight[:num_blocks].float(), self.sort_net.bias[:num_blocks].float()
            logits = F.linear(key_blocks.float().sum(dim=3), weight, bias) / self.temperature
            if real is not None:
                has_real = real.view(batch, num_blocks, block).any(dim=-1)
                same_kind = has_real[:, None, :, None] == has_real[:, None, None, :]
                logits = logits.masked_fill(~same_kind, float("-inf"))
            return sinkhorn(logits, self.iterations).to(key_blocks.dtype)
