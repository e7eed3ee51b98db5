"""Training checkpoints: written atomically, read with `weights_only=True` (never unpickling code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lra.errors import LRAError
from lra.records import atomic_write

LAST = "last.pt"
BEST = "best.pt"


def save(path: Path, state: dict[str, Any]) -> None:
    """Save `state` (tensors, numbers, strings and containers of them) atomically."""
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")


def load(path: Path) -> dict[str, Any] | None:
    """The state saved at `path`, or None when there is none."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which, do not guess
        raise LRAError(f"{path}: unreadable checkpoint ({type(error).__name__}); delete it to start over") from error
