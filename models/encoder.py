"""The encoder classifier every leaderboard row shares; only the attention differs between rows.

Token embedding, positions, pre-norm blocks (attention from the registry, then a GELU MLP), final
norm, CLS, first-token or mean pooling, and LRA's classifier head (dense, ReLU, dense).

Model-level techniques (model.encoder), each composable with every attention variant:
- share_layers (ALBERT): every layer runs the parameters of one block;
- embed_dim (ALBERT): tokens embedded in a narrower width, projected up to model.dim (the
  positions are added after the projection, at model.dim);
- reversible (Reformer): reversible residual layers (models/reversible.py), two streams whose
  mean goes to the final norm; training memory no longer grows with depth.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lra.config import Pooling, Positions
from lra.errors import LRAError
from lra.registry import config_fields
from models.attention import build_attention
from models.reversible import reversible


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """The fixed sine/cosine table of Vaswani et al. (LRA's default position embedding)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return table


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: DictConfig, max_len: int) -> None:
        super().__init__()
        if cfg.dim % cfg.num_heads:
            raise LRAError(f"model.dim: {cfg.dim} is not divisible by model.num_heads={cfg.num_heads}")
        self.num_heads = cfg.num_heads
        head_dim = cfg.dim // cfg.num_heads
        attention = OmegaConf.to_object(cfg.attention)
        self.attn = build_attention(
            attention.name, num_heads=cfg.num_heads, head_dim=head_dim, max_len=max_len, **config_fields(attention)
        )
        self.norm1 = nn.LayerNorm(cfg.dim)
        # A shared-QK variant (Reformer) gets its keys from the query projection: no key weights.
        self.projections = 2 if self.attn.shared_qk else 3
        self.qkv = nn.Linear(cfg.dim, self.projections * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, cfg.mlp_dim), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.mlp_dim, cfg.dim)
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def attend(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """The attention sub-layer's update of the residual stream."""
        batch, length, dim = x.shape
        projected = self.qkv(self.norm1(x)).view(batch, length, self.projections, self.num_heads, dim // self.num_heads)
        q, *kv = projected.permute(2, 0, 3, 1, 4)
        k, v = (q, *kv) if self.attn.shared_qk else kv
        heads = self.attn(q, k, v, key_padding_mask=key_padding_mask)
        return self.dropout(self.proj(heads.transpose(1, 2).reshape(batch, length, dim)))

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP sub-layer's update of the residual stream."""
        return self.dropout(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attend(x, key_padding_mask)
        return x + self.feed_forward(x)


def check_model_config(cfg: DictConfig, max_len: int) -> None:
    """Fail at once, before any data is loaded, on a model config whose blocks cannot be built."""
    embed_dim = cfg.encoder.embed_dim
    if embed_dim is not None and not 1 <= embed_dim <= cfg.dim:
        raise LRAError(f"model.encoder.embed_dim: must be between 1 and model.dim={cfg.dim}, got {embed_dim}")
    Block(cfg, max_len)


class Encoder(nn.Module):
    """Token ids (batch, length) and their padding mask -> one vector per sequence."""

    def __init__(self, cfg: DictConfig, vocab_size: int, max_len: int) -> None:
        super().__init__()
        self.pooling = Pooling(cfg.pooling)
        self.max_len = max_len
        seq_len = max_len + (self.pooling is Pooling.cls)
        embed_dim = cfg.encoder.embed_dim or cfg.dim
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.embed_up = nn.Linear(embed_dim, cfg.dim, bias=False) if cfg.encoder.embed_dim is not None else None
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if self.pooling is Pooling.cls else None
        if Positions(cfg.positions) is Positions.learned:
            self.positions = nn.Parameter(torch.randn(seq_len, cfg.dim) * 0.02)
        else:
            self.register_buffer("positions", sinusoidal_positions(seq_len, cfg.dim), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        blocks = 1 if cfg.encoder.share_layers else cfg.num_layers
        self.blocks = nn.ModuleList(Block(cfg, seq_len) for _ in range(blocks))
        self.num_layers = cfg.num_layers
        self.reversible = cfg.encoder.reversible
        self.norm = nn.LayerNorm(cfg.dim)

    def layers(self) -> list[Block]:
        """The block of every layer, in order (one block num_layers times when they are shared)."""
        return [self.blocks[i % len(self.blocks)] for i in range(self.num_layers)]

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """`mask`: True at real tokens; None when none is padding."""
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds the model's max_len {self.max_len}")
        x = self.embed(tokens)
        if self.embed_up is not None:
            x = self.embed_up(x)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)
            mask = None if mask is None else torch.cat([mask.new_ones(len(mask), 1), mask], dim=1)
        x = self.dropout(x + self.positions[: x.shape[1]])
        # No mask when nothing is padded: CUDA's fastest fused kernels take no explicit mask.
        key_padding_mask = None if mask is None or bool(mask.all()) else mask
        if self.reversible:
            x = reversible(self.layers(), x, key_padding_mask)
        else:
            for block in self.layers():
                x = block(x, key_padding_mask)
        x = self.norm(x)
        if self.pooling is not Pooling.mean:
            return x[:, 0]
        if mask is None:
            return x.mean(1)
        weights = mask.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(1) / weights.sum(1).clamp(min=1)  # an empty document pools to 0, not NaN


class Classifier(nn.Module):
    """Encoder, then LRA's classifier head: dense (mlp_dim), ReLU, dense (num_classes).

    With two towers (a matching task: tokens and mask of shape (batch, 2, length)), both
    sequences go through the same encoder, in one batch, and the head classifies LRA's
    [u, v, u * v, u - v] of their encodings u and v.
    """

    def __init__(self, cfg: DictConfig, vocab_size: int, num_classes: int, max_len: int, towers: int = 1) -> None:
        super().__init__()
        if towers not in (1, 2):
            raise ValueError(f"towers must be 1 or 2, got {towers}")
        self.towers = towers
        self.encoder = Encoder(cfg, vocab_size, max_len)
        features = cfg.dim if towers == 1 else 4 * cfg.dim
        self.head = nn.Sequential(nn.Linear(features, cfg.mlp_dim), nn.ReLU(), nn.Linear(cfg.mlp_dim, num_classes))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.towers == 1:
            return self.head(self.encoder(tokens, mask))
        mask = None if mask is None else mask.flatten(0, 1)
        u, v = self.encoder(tokens.flatten(0, 1), mask).unflatten(0, tokens.shape[:2]).unbind(1)
        return self.head(torch.cat([u, v, u * v, u - v], dim=-1))
