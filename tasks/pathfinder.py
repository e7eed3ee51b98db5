"""Pathfinder and Path-X (LRA): are the two markers of an image joined by one contour? The image is
read row by row as a sequence of grayscale pixel tokens (vocabulary 256).

`pathfinder` is the 32x32 release (1024 tokens), `pathx` the 128x128 one (16384 tokens); both read
the LRA release layout, <data.root>/<dir>/<difficulty folder>/metadata/<batch>.npy (text lines:
subdirectory, file name, index, label, ...) naming imgs/<batch>/sample_<i>.png, and both generate
that layout locally (tasks/pathfinder_draw.py) when it is missing. Splits as LRA: the first 80% of
the images (metadata files in batch order) train, the next 10% validate, the last 10% test.
An unreadable image (the release has an empty PNG) is skipped and counted in one warning.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from lra.config import SEED, Choice, TaskConfig, at_least
from lra.errors import LRAError
from tasks import register_task
from tasks.batching import Ragged, SequenceDataset, TaskData
from tasks.cache import cached_splits, fingerprint
from tasks.pathfinder_draw import DIFFICULTIES, RESOLUTIONS, SETTINGS_FILE, write_release
from tasks.sources import check_generated, generate_command, missing_data

log = logging.getLogger("lra.tasks.pathfinder")
PIXEL_VALUES = 256
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


class Difficulty(Choice):
    easy = "easy"  # curv_baseline: contours of 6 paddles
    intermediate = "intermediate"  # curv_contour_length_9
    hard = "hard"  # curv_contour_length_14, the LRA task


@dataclass
class PathfinderGenerate:
    """What `lra-data pathfinder` draws when the directory is missing."""

    count: int = field(default=200_000, metadata=at_least(2))  # images, one of each label at least; LRA: 200k
    seed: int = field(default=0, metadata=SEED)


@dataclass
class PathfinderConfig(TaskConfig):
    vocab_size = PIXEL_VALUES

    name: str = "pathfinder"
    num_classes: int = 2
    max_len: int = 32 * 32  # resolution^2 pixel tokens
    resolution: int = 32
    difficulty: Difficulty = Difficulty.hard
    dir: str = "pathfinder32"
    generate: PathfinderGenerate = field(default_factory=PathfinderGenerate)

    def check(self) -> None:
        """The ranges of the task's keys, a resolution drawn at, and max_len its pixels."""
        super().check()
        if self.resolution not in RESOLUTIONS:
            raise LRAError(f"task.resolution={self.resolution}: must be one of {', '.join(map(str, RESOLUTIONS))}, "
                           f"with task.max_len={self.max_len} its square (pixel tokens): "
                           f"{', '.join(str(side**2) for side in RESOLUTIONS)}")
        if self.max_len != self.resolution**2:
            raise LRAError(f"task.max_len={self.max_len}: a {self.resolution}x{self.resolution} image "
                           f"(task.resolution={self.resolution}) is {self.resolution**2} pixel tokens")


@dataclass
class PathXConfig(PathfinderConfig):
    name: str = "pathx"
    max_len: int = 128 * 128
    resolution: int = 128
    dir: str = "pathfinder128"


def read_metadata(path: Path) -> list[tuple[str, int]]:
    """(image path relative to the difficulty folder, label) of each line of one metadata file."""
    entries = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 4:
            raise LRAError(f"{path}:{lineno}: expected at least 4 space-separated fields "
                           f"(subdirectory, file name, index, label), got {len(fields)}")
        if fields[3] not in ("0", "1"):
            raise LRAError(f"{path}:{lineno}: label {fields[3]!r} is not 0 or 1")
        entries.append((f"{fields[0]}/{fields[1]}", int(fields[3])))
    return entries


def read_batch(job: tuple[Path, int]) -> tuple[list[np.ndarray], list[int], list[str]]:
    """Pixels and labels of the readable images one metadata file lists, and the unreadable ones."""
    metadata, resolution = job
    folder = metadata.parent.parent
    pixels, labels, unreadable = [], [], []
    for relative, label in read_metadata(metadata):
        path = folder / relative
        try:
            with Image.open(path) as image:
                gray = image.convert("L")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            unreadable.append(str(path))
            continue
        if gray.size != (resolution, resolution):
            raise LRAError(f"{path}: image of size {gray.size[0]}x{gray.size[1]}, "
                           f"expected {resolution}x{resolution} (task.resolution)")
        pixels.append(np.asarray(gray, dtype=np.uint8).reshape(-1))
        labels.append(label)
    return pixels, labels, unreadable


def read_images(metadata: list[Path], resolution: int, progress: bool) -> dict[str, SequenceDataset]:
    """All readable images, in batch order, cut into the LRA splits; both cores decode."""
    pixels: list[np.ndarray] = []
    labels: list[int] = []
    unreadable: list[str] = []
    with Pool() as pool:
        jobs = pool.imap(read_batch, [(path, resolution) for path in metadata])
        for batch_pixels, batch_labels, batch_unreadable in tqdm(jobs, total=len(metadata), desc="Pathfinder images",
                                                                 unit="batch", disable=not progress, leave=False):
            pixels += batch_pixels
            labels += batch_labels
            unreadable += batch_unreadable
    if unreadable:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(unreadable), unreadable[0])
    if len(labels) < len(SPLIT_FRACTIONS):
        raise LRAError(f"{metadata[0].parent}: {len(labels)} readable images; every split needs one")
    ends = np.cumsum([round(len(labels) * f) for f in SPLIT_FRACTIONS.values()])
    ends[-1] = len(labels)
    splits, start = {}, 0
    for split, end in zip(SPLIT_FRACTIONS, ends):
        splits[split] = SequenceDataset((Ragged.build(pixels[start:end]),), np.array(labels[start:end], dtype=np.int64))
        start = end
    return splits


def load(config: PathfinderConfig, root: Path, generate: bool, progress: bool) -> TaskData:
    """Pathfinder at config.resolution from root/config.dir, generated first when missing and allowed."""
    config.check()
    difficulty = Difficulty(config.difficulty).value
    folder = root / config.dir / DIFFICULTIES[difficulty][0]
    settings = {"resolution": config.resolution, "difficulty": difficulty, **asdict(config.generate)}
    if not (folder / "metadata").is_dir():
        if not generate:
            raise missing_data(
                f"Pathfinder images (task={config.name})", f"{folder}/metadata/*.npy (data.generate=false)",
                f"run `{generate_command('pathfinder', root / config.dir, settings)}`, "
                "set data.generate=true, or point data.root at the unpacked LRA release",
            )
        write_release(root / config.dir, resolution=config.resolution, difficulty=difficulty,
                      count=config.generate.count, seed=config.generate.seed, progress=progress)
    check_generated(folder / SETTINGS_FILE, settings)
    metadata = sorted(folder.glob("metadata/*.npy"), key=lambda p: (len(p.stem), p.stem))
    if not metadata:
        raise LRAError(f"{folder / 'metadata'}: no metadata/<batch>.npy files")
    key = {"resolution": config.resolution, "metadata": fingerprint(metadata)}
    splits = cached_splits(root, config.name, key, lambda: read_images(metadata, config.resolution, progress))
    return TaskData(**splits)


register_task(PathfinderConfig)(load)
register_task(PathXConfig)(load)
