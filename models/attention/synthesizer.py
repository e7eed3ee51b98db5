"""Synthesizer attention (Tay et al., 2021, "Synthesizer: Rethinking Self-Attention for Transformer
Models"): attention weights synthesized without query-key dot products, softmax(A B^T) V.

- `dense`: each token's row of logits comes from its own query alone, through a two-layer MLP
  relu(q W1 + b1) W2^T + b2, W2 in R^{max_len x d} (one column per key position, sliced to n).
  As A B^T: A = [relu(q W1 + b1), 1] per token, B = [W2, b2] per key position.
- `factorized_random`: logits R1 R2^T from learned R1, R2 in R^{max_len x k} per head, the same
  for every input: A = R1, B = R2, sliced to n rows.

Keys are never used. Both are one call of torch's scaled_dot_product_attention with A as the queries,
B as the keys and scale 1, so where its fused kernels run (on the CPU: without dropout) the n x n
weights are never formed and memory grows like fused full attention's; the LRA code formed them.
Padded keys are masked; the weights of a key position never depend on padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lra.config import AttentionConfig, Choice, at_least
from lra.errors import LRAError
from models.attention import Attention, register_attention


class SynthesizerMode(Choice):
    dense = "dense"
    factorized_random = "factorized_random"


@dataclass
class SynthesizerAttentionConfig(AttentionConfig):
    name: str = "synthesizer"
    mode: SynthesizerMode = SynthesizerMode.factorized_random
    k: int = field(default=32, metadata=at_least(1))  # factorized_random: rank of R1 R2^T


@register_attention(SynthesizerAttentionConfig)
class SynthesizerAttention(Attention):
    """softmax(A B^T) V with A and B synthesized as the module docstring says; the keys are ignored."""

    def __init__(self, config: SynthesizerAttentionConfig, *, num_heads: int, head_dim: int, max_len: int) -> None:
        super().__init__()
        self.mode = SynthesizerMode(config.mode)
        self.max_len = max_len
        self.dropout = config.dropout
        if self.mode is SynthesizerMode.dense:
            self.hidden = nn.Linear(head_dim, head_dim)  # shared by the heads, as in the LRA code
            self.to_keys = nn.Linear(head_dim, max_len)  # weight: W2 (max_len x d), bias: b2
        else:
            # (R1 or R2, heads, max_len, k), Xavier-uniform over (max_len, k) as in the LRA code.
            self.factors = nn.Parameter(torch.empty(2, num_heads, max_len, config.k))
            bound = math.sqrt(6.0 / (max_len + config.k))
            nn.init.uniform_(self.factors, -bound, bound)

    def synthesized(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A (batch or 1, heads, n, r) and B (1, heads or 1, n, r): the logits are A B^T."""
        n = q.shape[-2]
        if self.mode is SynthesizerMode.dense:
            hidden = F.relu(self.hidden(q))
            a = torch.cat([hidden, hidden.new_ones(*hidden.shape[:-1], 1)], dim=-1)
            b = torch.cat([self.to_keys.weight[:n], self.to_keys.bias[:n, None]], dim=-1).to(a.dtype)
            return a, b[None, None]
        factors = self.factors[:, :, :n].to(q.dtype)
        return factors[0][None], factors[1][None]

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        batch, heads, n, _ = v.shape
        if n > self.max_len:
            raise LRAError(f"synthesizer: sequence length {n} exceeds its max_len {self.max_len} "
                           f"(the synthesized weights have {self.max_len} key positions)")
        a, b = self.synthesized(q)
        # The fused kernels need one width for A, B and V: zero columns change neither A B^T nor V.
        width = max(a.shape[-1], v.shape[-1])
        a, b, values = (F.pad(x, (0, width - x.shape[-1])).expand(batch, heads, -1, -1) for x in (a, b, v))
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            a, b, values, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, scale=1.0
        )
        return out[..., : v.shape[-1]]
