"""Exact softmax attention (Vaswani et al., 2017): the baseline every variant is compared with.

Two implementations of the same function: `sdpa`, PyTorch's fused `scaled_dot_product_attention`
(flash / memory-efficient kernels where available), and `math`, the plain matmul-softmax-matmul
form that materialises the n x n scores, as the LRA paper's baseline did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from lra.config import AttentionConfig, FullImpl
from models.attention import Attention, register_attention
from models.attention.masking import mask_scores


@dataclass
class FullAttentionConfig(AttentionConfig):
    name: str = "full"
    impl: FullImpl = FullImpl.sdpa


@register_attention(FullAttentionConfig)
class FullAttention(Attention):
    """softmax(q k^T / sqrt(d)) v over all real keys."""

    def __init__(self, config: FullAttentionConfig, *, num_heads: int, head_dim: int, max_len: int) -> None:
        super().__init__()
        self.impl = FullImpl(config.impl)
        self.dropout = config.dropout

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        dropout = self.dropout if self.training else 0.0
        if self.impl is FullImpl.sdpa:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = mask_scores(scores, mask)
        probs = F.dropout(scores.softmax(dim=-1), p=dropout, training=self.training)
        return probs @ v
