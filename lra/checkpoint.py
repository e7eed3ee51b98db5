"""Training checkpoints: written atomically, one generation kept, read with `weights_only=True`.

`save` keeps the checkpoint it replaces beside the new one (`last.pt` -> `last.prev.pt`), so a file
that is truncated or corrupt later (a full disk, a bad copy) costs one checkpoint interval, not the
run: `load` reports the bad file and returns the previous state. Loading never unpickles code.

The best checkpoint (`best.pt`) is saved and loaded with `fallback=False`: no previous generation.
An older best model is not the one whose validation accuracy the record reports, so testing it,
teaching with it or compressing it would be silently wrong; an unreadable best checkpoint is an
error that names the file.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import torch

from lra.errors import LRAError
from lra.files import atomic_write

log = logging.getLogger("lra.checkpoint")

DIRECTORY = "checkpoints"  # a run directory's checkpoints, beside its records.jsonl
LAST = "last.pt"  # the resumable state of a run
BEST = "best.pt"  # the model weights of its best validation accuracy


def previous(path: Path) -> Path:
    """Where `save` keeps the checkpoint that `path` replaced: `last.pt` -> `last.prev.pt`."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save(path: Path, state: dict[str, Any], *, fallback: bool = True) -> None:
    """Save `state` (tensors, numbers, strings and containers of them), keeping the one it replaces
    (with `fallback=False`, keeping none).

    At every instant a complete checkpoint is on disk: the old file is linked to the previous name
    while it stays at `path`, then the new one is written beside it and renamed over `path`.
    """
    if fallback:
        _keep_previous(path)
    else:  # nothing older than the new state may lie beside it
        previous(path).unlink(missing_ok=True)
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")


def saved_mb(state: dict[str, Any]) -> float:
    """The size of `state` as `save` writes it, in MB: of a state dict, the weights' size on disk
    (int8 weights take a quarter of fp32's, shared ones count once)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes / 2**20


def _keep_previous(path: Path) -> None:
    """Make the checkpoint now at `path` the previous one, leaving it at `path` too (a hard link).

    Where the filesystem has no hard links it is renamed instead; until the new checkpoint lands
    only the previous one exists then, and `load` uses it.
    """
    if not path.exists():
        return
    kept = previous(path)
    kept.unlink(missing_ok=True)
    try:
        os.link(path, kept)
    except OSError:  # no hard links on this filesystem (some FAT, network and FUSE mounts)
        os.replace(path, kept)


def load(path: Path, *, fallback: bool = True) -> dict[str, Any] | None:
    """The state saved at `path`; the previous one, with a warning, when `path` is unreadable or
    missing; None when neither exists. LRAError names both files when neither can be read.

    With `fallback=False` (a checkpoint saved without a previous generation) only `path` is read:
    None when it is missing, LRAError naming it when it is unreadable.
    """
    kept = previous(path)
    failures: list[str] = []
    for candidate in (path, kept) if fallback else (path,):
        if not candidate.exists():
            continue
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated, corrupt, not a torch file, or code in the pickle
            failures.append(f"{candidate} ({_reason(error)})")
            continue
        if candidate == kept:
            why = f"unreadable checkpoint {failures[0]}" if failures else f"no checkpoint {path} (a save was cut short)"
            log.warning("%s; using the previous one, %s", why, kept)
        return state
    if failures and not fallback:
        raise LRAError(f"unreadable checkpoint {failures[0]}, and no previous one is kept for it; "
                       "rerun the run that wrote it with force=true")
    if failures:
        raise LRAError(f"no readable checkpoint: {'; '.join(failures)}; delete to start over")
    return None


def _reason(error: Exception) -> str:
    """Why torch could not load a file, in one short line (its messages run to paragraphs)."""
    detail = str(error).split("WeightsUnpickler error:")[-1]
    first = next((line.strip() for line in detail.splitlines() if line.strip()), "")
    first = first.split(". ")[0].rstrip(".")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
