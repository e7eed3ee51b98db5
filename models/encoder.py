"""The encoder classifier every leaderboard row shares; only the attention differs between rows.

Token embedding, positions, pre-norm blocks (attention from the registry, then a GELU MLP), final
norm, CLS, first-token or mean pooling, and LRA's classifier head (dense, ReLU, dense).

Model-level techniques (model.encoder), each composable with every attention variant:
- share_layers (ALBERT): every layer runs the parameters of one block;
- embed_dim (ALBERT): tokens embedded in a narrower width, projected up to model.dim (the
  positions are added after the projection, at model.dim);
- reversible (Reformer): reversible residual layers (models/reversible.py), two streams whose
  mean goes to the final norm; training memory no longer grows with depth.

Keys that build the LRA repository's Transformer (google-research/long-range-arena, flax), each
defaulting to this encoder's own choice:
- qkv_dim: the width attention works at (q, k, v, heads of qkv_dim / num_heads), apart from dim;
- init=lra: Xavier-uniform kernels and N(0, 1e-6) biases in the attention (q, k, v each on its own
  fans, as flax's three dense layers) and the MLP, flax's lecun-normal and zero biases in the head;
- attention_bias=false: no biases in the q, k, v and output projections (flax's `bias=False`);
- norm_eps: every LayerNorm's epsilon (flax: 1e-6);
- padding_mask=nonzero: LRA's `inputs > 0`, every token id 0 is padding (on Image and Pathfinder,
  a black pixel), and a CLS token takes the first token's mask;
- pool_padding: mean pooling over every position, padding included (LRA's unmasked mean);
- dual_head=lra: the two-tower head of LRA's classifier_head_dual, [u, v] and three dense layers.
The embedding (N(0, 1)), learned positions (N(0, 0.02)), CLS token (zeros) and LayerNorms (1, 0)
are initialised as LRA's under either init; an attention variant's own parameters keep their own.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lra.config import DualHead, Init, PaddingMask, Pooling, Positions
from lra.errors import LRAError
from lra.registry import config_fields
from models.attention import build_attention
from models.reversible import reversible

LRA_BIAS_STD = 1e-6  # LRA's bias_init=normal(stddev=1e-6) in the attention and MLP
TRUNCATED_STD = 0.87962566103423978  # std of a standard normal truncated to (-2, 2) (jax's variance_scaling)


def attention_width(cfg: DictConfig) -> int:
    """The width attention works at: model.qkv_dim, or model.dim; the heads split it evenly."""
    qkv_dim = cfg.qkv_dim
    key, width = ("model.dim", cfg.dim) if qkv_dim is None else ("model.qkv_dim", qkv_dim)
    if width < 1:
        raise LRAError(f"{key}: must be at least 1, got {width}")
    if width % cfg.num_heads:
        raise LRAError(f"{key}: {width} is not divisible by model.num_heads={cfg.num_heads}")
    return width


@torch.no_grad()
def xavier_(linear: nn.Linear, parts: int = 1) -> None:
    """LRA's attention and MLP init: Xavier-uniform kernels, N(0, 1e-6) biases. A fused linear of
    `parts` projections is initialised part by part, each on its own fans, as flax's separate dense
    layers (a DenseGeneral's kernel takes the fans of its flattened (inputs, outputs) shape)."""
    for part in linear.weight.chunk(parts):
        nn.init.xavier_uniform_(part)
    if linear.bias is not None:
        nn.init.normal_(linear.bias, std=LRA_BIAS_STD)


@torch.no_grad()
def lecun_normal_(linear: nn.Linear) -> None:
    """flax's default dense init (LRA's classifier head): jax's lecun_normal, a normal truncated to
    two standard deviations and rescaled to variance 1 / fan_in, and zero biases."""
    std = linear.in_features**-0.5 / TRUNCATED_STD
    nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(linear.bias)


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
        self.num_heads = cfg.num_heads
        self.qkv_dim = attention_width(cfg)
        self.head_dim = self.qkv_dim // cfg.num_heads
        attention = OmegaConf.to_object(cfg.attention)
        self.attn = build_attention(
            attention.name, num_heads=cfg.num_heads, head_dim=self.head_dim, max_len=max_len,
            **config_fields(attention),
        )
        eps, bias = cfg.norm_eps, cfg.attention_bias
        self.norm1 = nn.LayerNorm(cfg.dim, eps=eps)
        # A shared-QK variant (Reformer) gets its keys from the query projection: no key weights.
        self.projections = 2 if self.attn.shared_qk else 3
        self.qkv = nn.Linear(cfg.dim, self.projections * self.qkv_dim, bias=bias)
        self.proj = nn.Linear(self.qkv_dim, cfg.dim, bias=bias)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=eps)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, cfg.mlp_dim), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.mlp_dim, cfg.dim)
        )
        self.dropout = nn.Dropout(cfg.dropout)
        if Init(cfg.init) is Init.lra:
            self.init_lra()

    def init_lra(self) -> None:
        """LRA's TransformerBlock init: q, k, v (each its own dense layer there), output and MLP."""
        xavier_(self.qkv, parts=self.projections)
        for linear in (self.proj, self.mlp[0], self.mlp[3]):
            xavier_(linear)

    def attend(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """The attention sub-layer's update of the residual stream."""
        batch, length, _ = x.shape
        projected = self.qkv(self.norm1(x)).view(batch, length, self.projections, self.num_heads, self.head_dim)
        q, *kv = projected.permute(2, 0, 3, 1, 4)
        k, v = (q, *kv) if self.attn.shared_qk else kv
        heads = self.attn(q, k, v, key_padding_mask=key_padding_mask)
        return self.dropout(self.proj(heads.transpose(1, 2).reshape(batch, length, self.qkv_dim)))

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
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.padding_mask = PaddingMask(cfg.padding_mask)
        self.pool_padding = cfg.pool_padding

    def layers(self) -> list[Block]:
        """The block of every layer, in order (one block num_layers times when they are shared)."""
        return [self.blocks[i % len(self.blocks)] for i in range(self.num_layers)]

    def token_mask(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        """True at the tokens attention and pooling see: the real ones and, under padding_mask=nonzero,
        of those only the ids above 0 (LRA's `inputs > 0`)."""
        if self.padding_mask is PaddingMask.real:
            return mask
        nonzero = tokens > 0
        return nonzero if mask is None else nonzero & mask

    def cls_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The CLS token's mask: always seen, or under padding_mask=nonzero the first token's (LRA's)."""
        return mask[:, :1] if self.padding_mask is PaddingMask.nonzero else mask.new_ones(len(mask), 1)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """`mask`: True at real tokens; None when none is padding.

        The caller, who knows the lengths on the host, passes None for a batch without padding
        (`tasks.batching.pad_batch` does): a mask is used as given, never read back to find out,
        so a forward pass waits on no device and compiles to one graph. Without a mask, attention
        takes CUDA's fastest fused kernels (which take no explicit mask)."""
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds the model's max_len {self.max_len}")
        mask = self.token_mask(tokens, mask)
        x = self.embed(tokens)
        if self.embed_up is not None:
            x = self.embed_up(x)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)
            mask = None if mask is None else torch.cat([self.cls_mask(mask), mask], dim=1)
        x = self.dropout(x + self.positions[: x.shape[1]])
        if self.reversible:
            x = reversible(self.layers(), x, mask)
        else:
            for block in self.layers():
                x = block(x, mask)
        x = self.norm(x)
        if self.pooling is not Pooling.mean:
            return x[:, 0]
        if mask is None or self.pool_padding:
            return x.mean(1)
        weights = mask.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(1) / weights.sum(1).clamp(min=1)  # an empty document pools to 0, not NaN


def classifier_head(cfg: DictConfig, num_classes: int, towers: int) -> nn.Sequential:
    """LRA's classifier head: dense (mlp_dim), ReLU, dense (num_classes); with two towers, on
    [u, v, u * v, u - v] (dual_head=nli), or LRA's classifier_head_dual on [u, v] (dual_head=lra)
    with a second hidden layer of mlp_dim // 2."""
    hidden = cfg.mlp_dim
    if towers == 2 and DualHead(cfg.dual_head) is DualHead.lra:
        return nn.Sequential(
            nn.Linear(2 * cfg.dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden // 2), nn.ReLU(),
            nn.Linear(hidden // 2, num_classes),
        )
    features = cfg.dim if towers == 1 else 4 * cfg.dim
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


class Classifier(nn.Module):
    """Encoder, then the classifier head (`classifier_head`).

    With two towers (a matching task: tokens and mask of shape (batch, 2, length)), both
    sequences go through the same encoder, in one batch, and the head classifies their
    encodings u and v together.
    """

    def __init__(self, cfg: DictConfig, vocab_size: int, num_classes: int, max_len: int, towers: int = 1) -> None:
        super().__init__()
        if towers not in (1, 2):
            raise ValueError(f"towers must be 1 or 2, got {towers}")
        self.towers = towers
        self.encoder = Encoder(cfg, vocab_size, max_len)
        self.head = classifier_head(cfg, num_classes, towers)
        self.interaction = towers == 2 and DualHead(cfg.dual_head) is DualHead.nli
        if Init(cfg.init) is Init.lra:
            for layer in self.head:
                if isinstance(layer, nn.Linear):
                    lecun_normal_(layer)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.towers == 1:
            return self.head(self.encoder(tokens, mask))
        mask = None if mask is None else mask.flatten(0, 1)
        u, v = self.encoder(tokens.flatten(0, 1), mask).unflatten(0, tokens.shape[:2]).unbind(1)
        features = [u, v, u * v, u - v] if self.interaction else [u, v]
        return self.head(torch.cat(features, dim=-1))
