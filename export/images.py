"""Labelled image batches for verification and calibration, preprocessed as the service will.

The images come from the checkpoint's own dataset (its recorded `dataset` dict, rebuilt by
training.data) and go through training.data.eval_transform(preprocessing): resize the shorter side,
center crop, normalise, exactly the artifact's Preprocessing that the service applies.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from artifact import Preprocessing
from export.config import ExportError
from training import data


def load_split(record: dict, split: str, preprocessing: Preprocessing, what: str) -> torch.utils.data.Dataset:
    """The dataset's `split` with the evaluation transform; ExportError naming `what` needed it."""
    try:
        dataset = data.build_dataset(record, split, transform=data.eval_transform(preprocessing))
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
    """(float32 NCHW images, int64 labels) in batches of at most batch_size."""
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        images = np.stack([np.asarray(image, dtype=np.float32) for image, _ in items])
        labels = np.array([int(label) for _, label in items], dtype=np.int64)
        yield np.ascontiguousarray(images), labels


def first_images(dataset: torch.utils.data.Dataset, count: int) -> np.ndarray:
    """The first `count` images (fewer when the split is smaller), as one float32 NCHW array."""
    images, _ = next(batches(dataset, list(range(min(count, len(dataset)))), count))
    return images
