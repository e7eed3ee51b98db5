"""Exact attention written out independently of the modules under test, test inputs for it, the
length unit of a variant's config, and a tracker of the largest tensor a computation creates."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def softmax_attention(q, k, v, allowed=None, key_padding_mask=None):
    """softmax(q k^T / sqrt(d)) v in float64 over the allowed keys.

    `allowed`: bool, broadcastable to (batch, heads, queries, keys); `key_padding_mask`: (batch, keys)
    bool, True at real keys. Rows with no allowed key come out as zeros.
    """
    q, k, v = q.double(), k.double(), v.double()
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / q.shape[-1] ** 0.5
    mask = torch.ones_like(scores, dtype=torch.bool)
    if allowed is not None:
        mask = mask & allowed
    if key_padding_mask is not None:
        mask = mask & key_padding_mask[:, None, None, :]
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bhkd->bhqd", probs, v)


def random_heads(batch=3, heads=2, length=37, dim=16, dtype=torch.float32, scale=2.0, seed=0):
    """randn q, k, v whose logits q.k/sqrt(d) have std about `scale` (so attention is far from
    uniform), and a ragged padding mask: full length, length - 11, and 5 real tokens (at least 1)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=gen, dtype=dtype) for _ in range(3))
    q = q * scale**0.5
    k = k * scale**0.5
    return q, k, v, ragged_mask(batch, length)


def ragged_mask(batch, length):
    """(batch, length) padding mask of up to three samples: full length, length - 11 and 5 real
    tokens (at least 1)."""
    lengths = torch.tensor([length, max(length - 11, 1), min(length, 5)])[:batch]
    return torch.arange(length)[None, :] < lengths[:, None]


LENGTH_UNIT = re.compile(r"block|window|bucket|chunk|segment|kernel_size")


def longest_unit(config: Mapping[str, object]) -> int:
    """The longest length unit of an attention config's fields (block, window, bucket, kernel, ...;
    1 if none): a check of padding must span several of them to see the layout at work."""
    units = [value for key, value in config.items() if LENGTH_UNIT.search(key) and isinstance(value, int)]
    return max(units, default=1)


def real_positions(mask, out):
    """Boolean index of `out` (batch, heads, length, dim) at real query positions."""
    return mask[:, None, :, None].expand_as(out)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor created inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.largest = max([self.largest, *sizes])
        return out
