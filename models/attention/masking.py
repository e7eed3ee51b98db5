"""Masking shared by the variants: scores at disallowed keys get the dtype's lowest value.

Not -inf: a query row with no allowed key (a fully padded sample) then stays finite (uniform)
instead of NaN, in fp32 and bf16 alike, and every row with one allowed key is exact.
"""

from __future__ import annotations

import torch


def mask_scores(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """`scores` with the entries where `allowed` is False (broadcast) set to the lowest finite value."""
    return scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
