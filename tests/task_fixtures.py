"""Small files in each real source format of the LRA tasks, written by the tests themselves."""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import DictConfig
from PIL import Image

from lra.errors import LRAError
from runners.data import cli
from tasks import load_task
from tasks.batching import TaskData

REVIEWS = ["a good film", "naïve, but — fun ✓", "bad " * 40, "", "ok"]  # multi-byte UTF-8, long, empty


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_imdb(directory: Path, rows: int = 40, suffix: str = ".parquet") -> None:
    """The hub's layout of stanfordnlp/imdb: plain_text/{train,test}-00000-of-00001.parquet."""
    (directory / "plain_text").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        frame = pd.DataFrame({"text": [REVIEWS[i % len(REVIEWS)] + f" #{i}" for i in range(rows)],
                              "label": [i % 2 for i in range(rows)]})
        path = directory / "plain_text" / f"{split}-00000-of-00001{suffix}"
        frame.to_parquet(path) if suffix == ".parquet" else frame.to_csv(path, index=False)


def write_cifar(directory: Path, train: int = 40, test: int = 20, side: int = 32, seed: int = 0) -> None:
    """The hub's layout of uoft-cs/cifar10: columns img {bytes, path} (PNG) and label."""
    rng = np.random.default_rng(seed)
    (directory / "plain_text").mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("test", test)):
        images = rng.integers(0, 256, (rows, side, side, 3), dtype=np.uint8)
        frame = pd.DataFrame({
            "img": [{"bytes": png_bytes(image), "path": f"{i}.png"} for i, image in enumerate(images)],
            "label": [i % 10 for i in range(rows)],
        })
        frame.to_parquet(directory / "plain_text" / f"{split}-00000-of-00001.parquet")


def write_aan(directory: Path, rows: int = 24) -> None:
    """The LRA release's tsv_data/new_aan_pairs.{train,eval,test}.tsv: label, id1, id2, text1, text2."""
    directory.mkdir(parents=True, exist_ok=True)
    for split in ("train", "eval", "test"):
        lines = [f"{float(i % 2)}\tP{i}\tQ{i}\tpaper {i} on parsing é\tpaper {i} cites {'x' * i}\n"
                 for i in range(rows)]
        (directory / f"new_aan_pairs.{split}.tsv").write_text("".join(lines), encoding="utf-8")


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
