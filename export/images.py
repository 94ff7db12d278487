"""Labelled image batches for verification and calibration, preprocessed as the service will.

The images come from the checkpoint's own dataset (its recorded `dataset` dict, rebuilt by
training.data) and go through the service's own artifact.preprocess.to_input with the model's
Preprocessing: resize the shorter side, center crop, and for a float32 model normalise; for a uint8
model the cropped pixels themselves, so calibration and judging see what the service sends.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from artifact import Preprocessing
from export.config import ExportError
from artifact import preprocess
from training import data


class _ModelInput:
    """PIL image -> one image of the model's input, as the service computes it (picklable)."""

    def __init__(self, pre: Preprocessing) -> None:
        self.pre = pre

    def __call__(self, image) -> np.ndarray:
        return preprocess.to_input(image.convert("RGB"), self.pre)


def load_split(record: dict, split: str, preprocessing: Preprocessing, what: str) -> torch.utils.data.Dataset:
    """The dataset's `split` as the model's input; ExportError naming `what` needed it."""
    try:
        dataset = data.build_dataset(record, split, transform=_ModelInput(preprocessing))
    # The loaders raise their own errors for a missing folder, a failed download, an unknown kind.
    except Exception as error:  # noqa: BLE001
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"cannot load the {split} images for {what}: {first}") from error
    if len(dataset) == 0:
        raise ExportError(f"the {split} split for {what} has no images")
    return dataset


def sample(dataset: torch.utils.data.Dataset, count: int, seed: int = 0) -> list[int]:
    """`count` distinct indices (all when fewer), seeded: folders are sorted by class, so the first
    images would all be one class, while a random sample covers every class."""
    n = len(dataset)
    if count >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=count, replace=False).tolist())


def batches(dataset: torch.utils.data.Dataset, indices: Sequence[int],
            batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images as the model's input, int64 labels) in batches of at most batch_size."""
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        images = np.stack([np.asarray(image) for image, _ in items])
        labels = np.array([int(label) for _, label in items], dtype=np.int64)
        yield np.ascontiguousarray(images), labels


def first_images(dataset: torch.utils.data.Dataset, count: int) -> np.ndarray:
    """The first `count` images (fewer when the split is smaller), as one input batch."""
    images, _ = next(batches(dataset, list(range(min(count, len(dataset)))), count))
    return images
