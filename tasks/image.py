"""Image classification on pixel sequences (LRA "Image"): CIFAR-10 in grayscale, one token per
pixel (vocabulary 256), 1024 tokens, 10 classes.

Source: the Hugging Face dataset uoft-cs/cifar10 (parquet, columns img {bytes, path} and label),
loaded with datasets from <data.root>/<dir> when the files are there, else from the hub cache,
offline (tasks/sources.py). Splits as LRA: the first 90% of the training set trains (45k), the
rest validates (5k), test is test (10k). Grayscale is PIL's ITU-R 601-2 luma, as
tf.image.rgb_to_grayscale.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from lra.config import TaskConfig, between
from lra.errors import LRAError
from tasks import register_task
from tasks.batching import Ragged, SequenceDataset, TaskData, split_off
from tasks.cache import cached_splits, fingerprint
from tasks.sources import check_labels, read_table, table_sources

PIXEL_VALUES = 256
SIDE = 32


@dataclass
class ImageConfig(TaskConfig):
    vocab_size = PIXEL_VALUES

    name: str = "image"
    num_classes: int = 10
    max_len: int = SIDE * SIDE
    dir: str = "cifar10"
    hub: str = "uoft-cs/cifar10"
    # the tail of the training set held out for validation (LRA: train[90%:])
    val_fraction: float = field(default=0.1, metadata=between(0, 1, low_open=True, high_open=True))

    def check(self) -> None:
        """The ranges of the task's keys, and max_len an image's pixels."""
        super().check()
        if self.max_len != SIDE * SIDE:
            raise LRAError(f"task.max_len: an image is {SIDE * SIDE} pixel tokens, got {self.max_len}")


def grayscale_pixels(png: bytes, where: str) -> np.ndarray:
    """The SIDE x SIDE image encoded in png as SIDE * SIDE grayscale values, row by row."""
    try:
        image = Image.open(io.BytesIO(png)).convert("L")
    except (UnidentifiedImageError, OSError) as err:
        raise LRAError(f"{where}: not a readable image: {err}") from None
    if image.size != (SIDE, SIDE):
        raise LRAError(f"{where}: image of size {image.size[0]}x{image.size[1]}, expected {SIDE}x{SIDE}")
    return np.asarray(image, dtype=np.uint8).reshape(-1)


def read_images(files: list[Path], num_classes: int, progress: bool) -> SequenceDataset:
    """The pixel sequences and labels of one split's table files, in file order."""
    pixels: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for path in files:
        table = read_table(path, ["img", "label"])
        labels.append(check_labels(table["label"], num_classes, path))
        for row, img in enumerate(tqdm(table["img"], desc=path.name, unit="image", disable=not progress,
                                       leave=False), start=1):
            png = img.get("bytes") if isinstance(img, dict) else None
            if not png:
                raise LRAError(f"{path}: row {row}: column 'img' holds no image bytes")
            pixels.append(grayscale_pixels(png, f"{path}: row {row}"))
    return SequenceDataset((Ragged.build(pixels),), np.concatenate(labels))


@register_task(ImageConfig)
def load(config: ImageConfig, root: Path, generate: bool, progress: bool) -> TaskData:
    config.check()
    files = table_sources(root / config.dir, config.hub, ("train", "test"), what="CIFAR-10 images (task=image)")
    key = {"num_classes": config.num_classes, "val_fraction": config.val_fraction,
           "files": {split: fingerprint(paths) for split, paths in files.items()}}

    def build() -> dict[str, SequenceDataset]:
        # the tail, as LRA: train[:90%] trains, train[90%:] validates
        train, val = split_off(read_images(files["train"], config.num_classes, progress), config.val_fraction)
        return {"train": train, "val": val, "test": read_images(files["test"], config.num_classes, progress)}

    splits = cached_splits(root, "image", key, build)
    return TaskData(**splits)
