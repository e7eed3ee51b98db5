"""Small files in each real source format of the LRA tasks, written by the tests themselves (those of
IMDb, CIFAR-10 and the ACL Anthology pairs come from tasks/samples.py, which `make gpu-check` uses too)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig

from lra.errors import LRAError
from runners.data import cli
from tasks import load_task
from tasks.batching import TaskData
from tasks.samples import png_bytes


def write_pathfinder_tree(folder: Path, batches: int = 2, per_batch: int = 10, side: int = 32,
                          broken: tuple[int, int] | None = (0, 3)) -> None:
    """A release-style difficulty folder (imgs/<b>/sample_<i>.png, metadata/<b>.npy text lines),
    with the image (batch, index) `broken` an empty file, as one in the real release."""
    rng = np.random.default_rng(1)
    for batch in range(batches):
        (folder / "imgs" / str(batch)).mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(per_batch):
            label = (batch + i) % 2
            path = folder / "imgs" / str(batch) / f"sample_{i}.png"
            if (batch, i) == broken:
                path.write_bytes(b"")
            else:
                path.write_bytes(png_bytes(rng.integers(0, 256, (side, side), dtype=np.uint8)))
            lines.append(f"imgs/{batch} sample_{i}.png {i} {label} 14 2 6\n")
        (folder / "metadata").mkdir(parents=True, exist_ok=True)
        (folder / "metadata" / f"{batch}.npy").write_text("".join(lines))


def follow_the_missing_data_hint(cfg: DictConfig) -> TaskData:
    """The task of `cfg` (data.generate=false, its data missing) loaded after running, as printed,
    the `lra-data` command its missing-data error gives."""
    with pytest.raises(LRAError) as error:
        load_task(cfg.task, cfg.data, progress=False)
    program, *args = shlex.split(re.search(r"run `([^`]+)`", str(error.value)).group(1))
    assert program == "lra-data"
    cli(args)
    return load_task(cfg.task, cfg.data, progress=False)  # the settings check passes: what the task asks for
