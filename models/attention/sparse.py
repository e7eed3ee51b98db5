"""Block-sparse attention: local window, Sparse Transformer, BigBird, Longformer and ETC.

The five share one engine, `block_sparse_attention`. The sequence is padded to whole blocks; each
query block gathers a fixed number of whole key blocks (listed by a `BlockLayout`) plus the global
keys every query sees, and attends them under an exact token-level mask in one fused
`scaled_dot_product_attention` call whose batch is the blocks; global queries attend to every key.
No n x n tensor exists: per query, time and memory are the gathered plus the global keys. Each
variant is just its layout, built once over the blocks of max_len at construction, so a layout
(BigBird's random blocks included) is the same in training and eval and at every call.

A layout depends on positions only, never on the padded length of the batch: the pattern over n
tokens is the top-left n x n corner of the pattern over max_len. Local, Sparse Transformer,
Longformer and ETC patterns are defined position by position; BigBird's random and last global
blocks are laid out over max_len's blocks and cropped to n (`crop_blocks`). So padding a sample
further never changes what its real tokens attend, and its outputs never depend on its batch.

A forward pass crops max_len's layout to its ceil(n / block) blocks by slicing and fixed-size
indexing alone: which blocks, slots and global positions it keeps follows from n, a shape, and
never from tensor values. Shapes are static, nothing is read back from the device, and
`torch.compile` traces the whole attention as one graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Optional

import torch
import torch.nn.functional as F

from lra.config import SEED, AttentionConfig, at_least
from models.attention import Attention, check_config, register_attention


@dataclass(frozen=True)
class BlockLayout:
    """Which keys each query attends: whole key blocks per query block, an exact mask over them,
    and global keys and queries.

    blocks: (heads or 1, num_blocks, m) long, the key blocks gathered for each query block.
    allowed: (heads or 1, num_blocks, block or 1, m * block) bool, the gathered keys each query
        attends (1 row where all queries of a block attend the same keys); False in empty and
        repeated slots and at global keys, so that every key is counted once.
    global_keys: (G,) long, positions every query attends.
    global_queries: (Gq,) long, positions that attend every key.
    """

    block: int
    blocks: torch.Tensor
    allowed: torch.Tensor
    global_keys: torch.Tensor
    global_queries: torch.Tensor

    @property
    def num_blocks(self) -> int:
        return self.blocks.shape[1]

    @property
    def slots(self) -> int:
        """m: the key blocks gathered per query block."""
        return self.blocks.shape[2]

    def to(self, device: torch.device) -> BlockLayout:
        tensors = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "block"}
        return replace(self, **{name: tensor.to(device) for name, tensor in tensors.items()})

    def dense(self, n: int) -> torch.Tensor:
        """The pattern as a dense bool (heads or 1, n, n) tensor: n x n, for tests only."""
        heads, num_blocks, _ = self.blocks.shape
        padded = num_blocks * self.block
        allowed = self.allowed.expand(-1, -1, self.block, -1)
        head = torch.arange(heads).view(-1, 1, 1, 1).expand_as(allowed)
        query = torch.arange(padded).view(1, num_blocks, self.block, 1).expand_as(allowed)
        key = _key_positions(self.blocks, self.block)[:, :, None, :].expand_as(allowed)
        dense = torch.zeros(heads, padded, padded, dtype=torch.bool)
        dense[head[allowed], query[allowed], key[allowed]] = True
        dense[:, :, self.global_keys] = True
        dense[:, self.global_queries, :] = True
        return dense[:, :n, :n]


def _key_positions(blocks: torch.Tensor, block: int) -> torch.Tensor:
    """(heads, num_blocks, m) block ids -> (heads, num_blocks, m * block) token positions."""
    return (blocks[..., None] * block + torch.arange(block)).flatten(-2)


def make_layout(
    block: int,
    blocks: torch.Tensor,
    *,
    band: Optional[int] = None,
    global_keys: Optional[torch.Tensor] = None,
    global_queries: Optional[torch.Tensor] = None,
) -> BlockLayout:
    """The layout that gathers `blocks` ((heads or 1, num_blocks, m); -1 marks an empty slot).

    Every key of a gathered block is allowed except in empty slots, in a block already listed
    earlier for the same query block, at global keys (attended once, as global keys) and, given
    `band`, at more than `band` positions from the query.
    """
    no_positions = torch.empty(0, dtype=torch.long)
    global_keys = no_positions if global_keys is None else global_keys
    global_queries = no_positions if global_queries is None else global_queries
    blocks = blocks[..., (blocks >= 0).flatten(0, 1).any(dim=0)]  # no slot empty everywhere (short inputs)
    num_blocks = blocks.shape[1]
    keys = _key_positions(blocks.clamp(min=0), block)[:, :, None, :]
    is_global = torch.zeros(num_blocks * block, dtype=torch.bool)
    is_global[global_keys] = True
    repeated = (blocks[..., :, None] == blocks[..., None, :]).tril(diagonal=-1).any(dim=-1)
    kept = (blocks >= 0) & ~repeated
    allowed = kept.repeat_interleave(block, dim=-1)[:, :, None, :] & ~is_global[keys]
    if band is not None:
        queries = torch.arange(num_blocks * block).view(1, num_blocks, block, 1)
        allowed = allowed & ((queries - keys).abs() <= band)
    return BlockLayout(block, blocks.clamp(min=0), allowed.contiguous(), global_keys, global_queries)


def slot_first_use(layout: BlockLayout) -> list[int]:
    """Per slot of `layout`, the fewest blocks an input needs for that slot to hold a key some query
    attends: max(query block, key block) + 1, least over the heads and query blocks where the slot
    allows a key; one more than the layout's blocks for a slot that allows none."""
    num_blocks = layout.num_blocks
    used = layout.allowed.unflatten(-1, (layout.slots, layout.block)).any(dim=-1).any(dim=2)  # (heads, blocks, m)
    needed = torch.maximum(torch.arange(num_blocks).view(1, -1, 1), layout.blocks) + 1
    return needed.masked_fill(~used, num_blocks + 1).amin(dim=(0, 1)).tolist()


def crop_layout(layout: BlockLayout, num_blocks: int, first_use: list[int], global_keys: int,
                global_queries: int) -> BlockLayout:
    """The first `num_blocks` query blocks of `layout` with the slots they use (`first_use`, of
    `slot_first_use`), no key beyond them, and the first `global_keys` and `global_queries` global
    positions. Slices and indices of a fixed size only: the shapes follow from `num_blocks` alone."""
    kept = [slot for slot, first in enumerate(first_use) if first <= num_blocks]
    if num_blocks == layout.num_blocks and len(kept) == layout.slots:
        blocks, allowed = layout.blocks, layout.allowed
    else:
        blocks = layout.blocks[:, :num_blocks]
        allowed = layout.allowed[:, :num_blocks].unflatten(-1, (layout.slots, layout.block))
        if len(kept) < layout.slots:
            blocks, allowed = blocks[..., kept], allowed[..., kept, :]
        inside = blocks < num_blocks  # keys beyond the input would be padding: no query attends them
        allowed = (allowed & inside[:, :, None, :, None]).flatten(-2)
        blocks = blocks.masked_fill(~inside, 0)
    return BlockLayout(layout.block, blocks, allowed, layout.global_keys[:global_keys],
                       layout.global_queries[:global_queries])


def crop_blocks(blocks: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """The first `num_blocks` query blocks of `blocks` ((heads or 1, more blocks, m), laid out over
    a longer sequence), with the slots that point beyond them emptied (-1): in the longer sequence
    those keys would be padding, which no real query attends."""
    cropped = blocks[:, :num_blocks]
    return cropped.masked_fill(cropped >= num_blocks, -1)


def neighbour_blocks(num_blocks: int, reach: int) -> torch.Tensor:
    """(1, num_blocks, 2 * reach + 1): each block and `reach` blocks on either side, -1 past the ends."""
    blocks = torch.arange(num_blocks)[:, None] + torch.arange(-reach, reach + 1)
    return blocks.masked_fill((blocks < 0) | (blocks >= num_blocks), -1)[None]


def band_block(window: int) -> int:
    """The block size a band of `window` positions on either side is computed on: `window` rounded
    up to a multiple of 16, which the fused CPU kernel runs much faster (25 -> 32: 1.5x faster)."""
    return 16 * math.ceil(window / 16)


def _gather_blocks(x: torch.Tensor, blocks: torch.Tensor, block: int) -> torch.Tensor:
    """x (batch, heads or 1, padded length, ...) -> (batch, heads, num_blocks, m * block, ...).

    One index_select of whole blocks over (head, block) pairs: no per-token index or scatter.
    """
    batch, x_heads = x.shape[:2]
    rest = x.shape[3:]
    layout_heads, num_blocks, m = blocks.shape
    heads = max(x_heads, layout_heads)
    flat = x.expand(batch, heads, *x.shape[2:]).reshape(batch, heads * num_blocks, block, *rest)
    index = (torch.arange(heads, device=blocks.device).view(-1, 1, 1) * num_blocks + blocks).flatten()
    return flat.index_select(1, index).view(batch, heads, num_blocks, m * block, *rest)


def _append_to_blocks(gathered: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """Append `extra` (batch, heads, G, dim) to the keys of every block of `gathered`
    (batch, heads, num_blocks, m, dim), so that each block attends them in the same softmax."""
    return torch.cat([gathered, extra[:, :, None].expand(-1, -1, gathered.shape[2], -1, -1)], dim=3)


def _pad_to(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad dim 2 of (batch, heads, n, dim) to `length`."""
    return F.pad(x, (0, 0, 0, length - x.shape[2])) if length > x.shape[2] else x


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor],
    layout: BlockLayout,
    dropout: float = 0.0,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v restricted to `layout`, on (batch, heads, n, dim) inputs.

    n is padded to whole blocks; that padding is masked like padded keys and cropped from the output.
    Padding is masked for real queries only: a padded query attends its whole pattern, so no row is
    ever fully masked (finite, never NaN, whatever a backend does with such rows) and a fully padded
    sample stays finite; outputs at padded positions are meaningless anyway.
    """
    batch, heads, n, dim = q.shape
    block, num_blocks = layout.block, layout.num_blocks
    padded = block * num_blocks
    real = key_padding_mask
    if real is None and padded > n:
        real = torch.ones(1, n, dtype=torch.bool, device=q.device)
    if real is not None:
        real = F.pad(real, (0, padded - n), value=False)
    q, k, v = (_pad_to(t, padded) for t in (q, k, v))

    keys, values = (_gather_blocks(t, layout.blocks, block) for t in (k, v))
    allowed = layout.allowed[None]
    if real is not None:
        padded_query = ~real.view(-1, 1, num_blocks, block, 1)
        allowed = allowed & (_gather_blocks(real[:, None], layout.blocks, block)[:, :, :, None, :] | padded_query)
    if len(layout.global_keys):
        keys = _append_to_blocks(keys, k.index_select(2, layout.global_keys))
        values = _append_to_blocks(values, v.index_select(2, layout.global_keys))
        if real is None:
            global_allowed = allowed.new_ones(len(layout.global_keys))
        else:
            global_allowed = real[:, None, None, None, layout.global_keys] | padded_query
        allowed = torch.cat([allowed, global_allowed.expand(*allowed.shape[:-1], -1)], dim=-1)

    # The blocks are the batch of one fused call. A mask shared by the whole batch and all heads
    # broadcasts over (batch * heads) unexpanded; otherwise the heads go with the blocks.
    gathered = keys.shape[3]
    if allowed.shape[:2] == (1, 1):
        shape, mask = (batch * heads, num_blocks), allowed[0]
    else:
        shape = (batch, heads * num_blocks)
        mask = allowed.expand(-1, heads, -1, -1, -1).flatten(1, 2)
    out = F.scaled_dot_product_attention(
        q.reshape(*shape, block, dim),
        keys.reshape(*shape, gathered, dim),
        values.reshape(*shape, gathered, dim),
        attn_mask=mask,
        dropout_p=dropout,
    ).view(batch, heads, padded, dim)

    if len(layout.global_queries):
        mask = None if real is None else real[:, None, None, :] | ~real[:, None, layout.global_queries, None]
        queries = q.index_select(2, layout.global_queries)
        full = F.scaled_dot_product_attention(queries, k, v, attn_mask=mask, dropout_p=dropout)
        out = out.index_copy(2, layout.global_queries, full)
    return out[:, :, :n]


class BlockSparseAttention(Attention):
    """Base of the variants: a layout over max_len's blocks, built once (`set_layout`, called at the
    end of a variant's construction) and cropped to each input's blocks, run by the shared engine."""

    linear_memory = True

    def __init__(self, config: AttentionConfig, *, block: int) -> None:
        super().__init__()
        self.block = block
        self.dropout = config.dropout

    def build_layout(self, num_blocks: int) -> BlockLayout:
        """The layout of a sequence of `num_blocks` blocks, on the CPU: the first `num_blocks` query
        blocks of the layout of any longer sequence, with no key beyond them, so that padding a
        sequence further never changes what its tokens attend."""
        raise NotImplementedError

    def set_layout(self, max_len: int) -> None:
        """Lay the pattern out over max_len's blocks, once: its tensors become buffers (they follow
        the module's device and stay out of the state_dict), and what a shorter input keeps of them
        is noted in Python numbers, so that a forward pass builds no layout and reads no tensor."""
        self.max_blocks = math.ceil(max_len / self.block)
        with torch.device("cpu"):  # also when the model is built on the meta device
            layout = self.build_layout(self.max_blocks)
            ends = torch.arange(self.max_blocks + 1) * self.block
            self.global_key_counts = torch.searchsorted(layout.global_keys, ends).tolist()
            self.global_query_counts = torch.searchsorted(layout.global_queries, ends).tolist()
            self.slot_first_use = slot_first_use(layout)
        for name in ("blocks", "allowed", "global_keys", "global_queries"):
            self.register_buffer(f"layout_{name}", getattr(layout, name), persistent=False)

    def layout(self, n: int) -> BlockLayout:
        """The layout for length n: max_len's, cropped to ceil(n / block) blocks."""
        num_blocks = -(-n // self.block)
        if num_blocks > self.max_blocks:
            raise ValueError(f"sequence of {num_blocks} blocks of {self.block} exceeds the attention's max_len "
                             f"({self.max_blocks} blocks)")
        layout = BlockLayout(self.block, self.layout_blocks, self.layout_allowed, self.layout_global_keys,
                             self.layout_global_queries)
        return crop_layout(layout, num_blocks, self.slot_first_use, self.global_key_counts[num_blocks],
                           self.global_query_counts[num_blocks])

    def dense_pattern(self, n: int) -> torch.Tensor:
        """The allowed pattern at length n as a dense bool (heads or 1, n, n) tensor; for tests only."""
        return self.layout(n).to(torch.device("cpu")).dense(n)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        layout = self.layout(q.shape[2])
        return block_sparse_attention(q, k, v, key_padding_mask, layout, self.dropout if self.training else 0.0)


@dataclass
class LocalAttentionConfig(AttentionConfig):
    name: str = "local"
    window: int = field(default=25, metadata=at_least(1))


@register_attention(LocalAttentionConfig)
class LocalAttention(BlockSparseAttention):
    """Each query attends the keys within `window` positions on either side: an exact band.

    Computed on blocks of at least `window` tokens (`band_block`): each query block gathers its
    previous, own and next block and masks them to |i - j| <= window; O(n * window). The configs of
    Longformer and ETC add global tokens (the first positions); local attention has none.
    """

    def __init__(self, config: LocalAttentionConfig, *, num_heads: int, head_dim: int, max_len: int) -> None:
        super().__init__(config, block=band_block(config.window))
        self.window = config.window
        self.global_tokens = getattr(config, "global_tokens", 0)
        self.set_layout(max_len)

    def build_layout(self, num_blocks: int) -> BlockLayout:
        first = torch.arange(min(self.global_tokens, num_blocks * self.block))
        band = neighbour_blocks(num_blocks, 1)
        return make_layout(self.block, band, band=self.window, global_keys=first, global_queries=first)


@dataclass
class SparseAttentionConfig(AttentionConfig):
    name: str = "sparse"
    block: int = field(default=256, metadata=at_least(1))
    summary: int = field(default=8, metadata=at_least(1))  # at most block
    global_tokens: int = field(default=1, metadata=at_least(0))


@register_attention(SparseAttentionConfig)
class SparseAttention(BlockSparseAttention):
    """The Sparse Transformer's fixed pattern (Child et al., 2019), without the causal restriction.

    A query attends every key of its own block of `block` (l) positions and the summary columns,
    the last `summary` (c) positions of every block; the first `global_tokens` positions (the CLS
    token) attend and are attended by every position. The summary columns are global keys, so a
    query sees l + n c / l keys: O(n^2 c / l) in principle, near-linear while n c / l is small.
    """

    def __init__(self, config: SparseAttentionConfig, *, num_heads: int, head_dim: int, max_len: int) -> None:
        super().__init__(config, block=config.block)
        self.summary = config.summary
        check_config(self.summary <= self.block, "summary", f"must be at most block={self.block}, got {self.summary}")
        self.global_tokens = config.global_tokens
        self.set_layout(max_len)

    def build_layout(self, num_blocks: int) -> BlockLayout:
        positions = torch.arange(num_blocks * self.block)
        summary = positions % self.block >= self.block - self.summary
        first = positions < self.global_tokens
        own_block = torch.arange(num_blocks).view(1, num_blocks, 1)
        global_keys, global_queries = positions[summary | first], positions[first]
        return make_layout(self.block, own_block, global_keys=global_keys, global_queries=global_queries)


@dataclass
class BigBirdAttentionConfig(AttentionConfig):
    name: str = "bigbird"
    block: int = field(default=64, metadata=at_least(1))
    random_blocks: int = field(default=3, metadata=at_least(0))
    window_blocks: int = field(default=3, metadata=at_least(1))  # odd: the query's own block in the middle
    global_blocks: int = field(default=2, metadata=at_least(0))
    seed: int = field(default=0, metadata=SEED)


@register_attention(BigBirdAttentionConfig)
class BigBirdAttention(BlockSparseAttention):
    """BigBird's block-sparse pattern (Zaheer et al., 2020): global, sliding-window and random blocks.

    The layout is drawn once over the blocks of `max_len` and cropped to each input's blocks, as if
    every input were padded to max_len (as BigBird and LRA pad them): the global blocks are the first
    ceil(g / 2) and the last floor(g / 2) whole blocks of max_len, and attend and are attended by
    every position. Every other query block attends its `window_blocks` neighbouring blocks and
    `random_blocks` blocks drawn per head, without repeats, among the rest of max_len's blocks. The
    draw uses a torch.Generator seeded with `seed`, so it is fixed, identical in training and eval,
    and kept at every length (no switch to full attention for short inputs). A shorter input keeps
    the slots of its own blocks only: it sees fewer random blocks, and the last global blocks only
    once it reaches them, exactly what it would see padded to max_len, whatever its batch.
    """

    def __init__(self, config: BigBirdAttentionConfig, *, num_heads: int, head_dim: int, max_len: int) -> None:
        super().__init__(config, block=config.block)
        self.window_blocks = config.window_blocks
        check_config(self.window_blocks % 2 == 1, "window_blocks", f"must be odd (own block in the middle), got {self.window_blocks}")
        self.random_blocks = config.random_blocks
        self.global_blocks = config.global_blocks
        self.seed = config.seed
        self.num_heads = num_heads
        self.whole_blocks = max_len // self.block
        self.set_layout(max_len)  # sets max_blocks, which the layout is drawn over

    def global_block_ids(self) -> torch.Tensor:
        """The global blocks of max_len: the first ceil(g / 2) blocks and the last floor(g / 2) whole
        ones. Whole: the encoder's CLS token makes max_len one more than a task's length, which would
        otherwise leave a last global block of a single token."""
        first = torch.arange(min(self.max_blocks, (self.global_blocks + 1) // 2))
        last = torch.arange(max(0, self.whole_blocks - self.global_blocks // 2), self.whole_blocks)
        return torch.cat([first, last]).unique()

    def random_block_ids(self, global_blocks: torch.Tensor) -> torch.Tensor:
        """(heads, max_blocks, r): per head and non-global query block of max_len, `random_blocks`
        distinct blocks drawn uniformly outside its window and the global blocks; -1 where fewer remain."""
        num_blocks = self.max_blocks
        block_ids = torch.arange(num_blocks)
        candidate = (block_ids[:, None] - block_ids).abs() > self.window_blocks // 2
        candidate[global_blocks, :] = False
        candidate[:, global_blocks] = False
        generator = torch.Generator().manual_seed(self.seed)
        draw = torch.rand(self.num_heads, num_blocks, num_blocks, generator=generator).masked_fill(~candidate, 2.0)
        chosen = draw.argsort(dim=-1)[..., : min(self.random_blocks, num_blocks)]
        return chosen.masked_fill(~candidate.expand_as(draw).gather(-1, chosen), -1)

    def build_layout(self, num_blocks: int) -> BlockLayout:
        if num_blocks > self.max_blocks:
            raise ValueError(f"sequence of {num_blocks} blocks of {self.block} exceeds the attention's max_len "
                             f"({self.max_blocks} blocks)")
        # Global keys are whole blocks here: gathered with the others (not appended to every block).
        global_blocks = self.global_block_ids()
        window = neighbour_blocks(self.max_blocks, self.window_blocks // 2)
        random = self.random_block_ids(global_blocks)
        heads, max_blocks = self.num_heads, self.max_blocks
        blocks = torch.cat([global_blocks.expand(heads, max_blocks, -1), window.expand(heads, -1, -1), random], dim=-1)
        global_positions = _key_positions(global_blocks[global_blocks < num_blocks][None, None], self.block).flatten()
        return make_layout(self.block, crop_blocks(blocks, num_blocks), global_queries=global_positions)


@dataclass
class LongformerAttentionConfig(LocalAttentionConfig):
    name: str = "longformer"
    window: int = 256
    global_tokens: int = field(default=1, metadata=at_least(0))


@register_attention(LongformerAttentionConfig)
class LongformerAttention(LocalAttention):
    """Longformer (Beltagy et al., 2020): the local band of `window` positions on either side plus
    the first `global_tokens` positions (the CLS token the encoder prepends), which attend to every
    key and which every query attends (once, also where they are in its window). Computed by
    `LocalAttention`, whose layout takes the global tokens of this config."""


@dataclass
class ETCAttentionConfig(LongformerAttentionConfig):
    name: str = "etc"
    window: int = 84
    global_tokens: int = 16


@register_attention(ETCAttentionConfig)
class ETCAttention(LongformerAttention):
    """ETC's global-local attention (Ainslie et al., 2020): global tokens attend to and are attended
    by everything (g2g, g2l, l2g), the long input attends a local window (l2l). The same function as
    Longformer's pattern, computed by it; ETC's global tokens are a separate global input, which the
    shared encoder does not have, so here they are the first `global_tokens` positions (the CLS token
    and the tokens after it), and the defaults are ETC's: a larger global set, a local radius of 84."""
