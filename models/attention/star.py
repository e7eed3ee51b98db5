"""Star-Transformer attention (Guo et al., 2019, "Star-Transformer").

A star topology: the relay node, the first real token (the CLS token the encoder prepends, else
the first token), attends to every token and is attended by every token; the other real tokens,
the satellites, form a ring in their order: each attends itself, its two neighbours on the ring
(the first and the last satellite are neighbours) and the relay, four keys (fewer on rings of under
three satellites, each key counted once). The paper's layer also lets a satellite see its own
input embedding and iterates the relay and satellite updates; here one attention call, on the
encoder's ordinary blocks, computes one round of both.

Time and memory are linear in n: four gathered keys per satellite and one full row for the relay.
The ring closes over the real tokens of each sample, so padding never enters a real output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from lra.config import AttentionConfig
from models.attention import Attention, register_attention
from models.attention.masking import mask_scores


@dataclass
class StarAttentionConfig(AttentionConfig):
    name: str = "star"


def star_keys(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The relay and the keys each position attends as a satellite, from `real` (batch, n), True at
    real tokens (anywhere: the ring follows their order).

    Returns the relay's position (batch,), the first real token; (batch, n, 4) positions [self,
    previous, next, relay] on the ring of the other real tokens; and (batch, n, 4) bool, False at a
    repeat of an earlier slot. A padded position gets its neighbours on the line 0 .. n-1 instead,
    all allowed, so that its row is never empty."""
    batch, n = real.shape
    position = torch.arange(n, device=real.device).expand(batch, n)
    rank = real.cumsum(dim=-1) - 1  # of each real token among the real tokens
    position_of = torch.zeros(batch, n + 1, dtype=torch.long, device=real.device)  # rank -> position; n: padding
    position_of.scatter_(1, torch.where(real, rank, n), position)
    last = (real.sum(dim=-1, keepdim=True) - 1).clamp(min=1)  # rank of the last satellite
    previous = position_of.gather(1, torch.where(rank <= 1, last, rank - 1))
    following = position_of.gather(1, torch.where(rank >= last, 1, rank + 1))
    previous = torch.where(real, previous, (position - 1).clamp(min=0))
    following = torch.where(real, following, (position + 1).clamp(max=n - 1))
    relay = position_of[:, :1].expand(batch, n)
    keys = torch.stack([position, previous, following, relay], dim=-1)
    repeated = (keys[..., :, None] == keys[..., None, :]).tril(diagonal=-1).any(dim=-1)
    return position_of[:, 0], keys, ~repeated | ~real[..., None]


@register_attention(StarAttentionConfig)
class StarAttention(Attention):
    """The relay (the first real token) attends all; every other token its ring neighbours and the relay."""

    linear_memory = True

    def __init__(self, config: StarAttentionConfig, *, num_heads: int, head_dim: int, max_len: int) -> None:
        super().__init__()
        self.dropout = config.dropout

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        batch, heads, n, dim = q.shape
        real = torch.ones(batch, n, dtype=torch.bool, device=q.device) if key_padding_mask is None else key_padding_mask
        relay, keys, allowed = star_keys(real)
        rows = (keys + torch.arange(batch, device=q.device).view(-1, 1, 1) * n).flatten()
        # (batch * n, heads * dim) rows gathered once for all four slots: (batch, heads, n, 4, dim)
        gathered_k, gathered_v = (
            x.transpose(1, 2).reshape(batch * n, heads * dim)[rows].view(batch, n, 4, heads, dim).permute(0, 3, 1, 2, 4)
            for x in (k, v)
        )
        scores = torch.einsum("bhnd,bhnsd->bhns", q, gathered_k) / math.sqrt(dim)
        scores = mask_scores(scores, allowed[:, None])
        probs = F.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
        out = torch.einsum("bhns,bhnsd->bhnd", probs, gathered_v)

        # The relay's row: every real key (every key in a fully padded sample: never an empty row).
        mask = (real | ~real.any(dim=-1, keepdim=True))[:, None, None, :]
        relay_index = relay.view(batch, 1, 1, 1).expand(-1, heads, 1, dim)
        relay_out = F.scaled_dot_product_attention(
            q.gather(2, relay_index), k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return out.scatter(2, relay_index, relay_out)
