"""Shared fixtures for the training tests: small image folders on disk and a tiny training config."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.config import TrainConfig


def write_image_folder(root: Path, classes: list[str], per_class: int = 2, size: int = 40) -> Path:
    """root/{train,val}/<class>/<i>.png with small random-coloured real PNG files."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size, size + 8, 3), dtype=np.uint8)
                pixels[..., label % 3] = 255  # a learnable hint, not that these tests train on it
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def make_image_folder():
    """The folder writer itself, for tests that need other class names (tests cannot import conftest)."""
    return write_image_folder


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Three classes named by ImageNet WordNet ids (tench, goldfish, great white shark)."""
    return write_image_folder(tmp_path / "imagenet", ["n01440764", "n01443537", "n01484850"])


@pytest.fixture
def tiny(tmp_path) -> TrainConfig:
    """resnet20 at 32px on a small synthetic set: a few seconds per run on two cores."""
    return TrainConfig(arch="resnet20", image_size=32, batch_size=16, train_size=96, val_size=40,
                       max_steps=8, workers=0, log_every=2, out=str(tmp_path / "run"))
