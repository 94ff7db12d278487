"""A real image set that needs no download: scikit-learn's bundled handwritten digits (UCI optdigits).

1797 scans of digits written by 43 people, 8x8 pixels of 17 grey levels, ten classes. They ship
inside scikit-learn's wheel, so the paper experiments (training.paper.experiments) have real images
to learn from on a machine without a network. `load` upscales them (bilinear) to the size asked for and
copies the grey level into three channels, so the CIFAR networks take them unchanged.

    from training.paper import digits
    images, labels = digits.load("train", size=32)   # uint8 N x 3 x 32 x 32, int64 N

The split is fixed (seeded by SPLIT_SEED, stratified by class: 80% train, 20% test) and does not
depend on a run's seed, so runs with different seeds are measured on the same test images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CLASSES = tuple(str(d) for d in range(10))
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def _split_indices() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits  # scikit-learn: the `train` extra

    labels = load_digits().target
    rng = np.random.default_rng(SPLIT_SEED)
    test = []
    for c in range(len(CLASSES)):  # stratified: each class keeps its share in both splits
        members = rng.permutation(np.flatnonzero(labels == c))
        test.extend(members[: int(round(TEST_FRACTION * len(members)))])
    is_test = np.zeros(len(labels), bool)
    is_test[test] = True
    return {"train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test)}


def load(split: str, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images N x 3 x size x size, int64 labels N) of the 'train' (1437) or 'test' (360) split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if size < 8:
        raise ValueError(f"size must be >= 8 (the scans are 8x8), got {size}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    index = _split_indices()[split]
    # 0..16 ink levels -> 0..1; dark ink on white paper is how digits are read, but the scans store
    # ink as high values: keep them (white digits on black, like MNIST).
    grey = torch.from_numpy(bunch.images[index].astype(np.float32) / 16.0)[:, None]
    big = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    images = (big * 255 + 0.5).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return images, torch.from_numpy(bunch.target[index].astype(np.int64))
