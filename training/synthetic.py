"""The synthetic image set: ten honestly named classes of shapes and textures, drawn on the fly.

Image `index` of a split is a pure function of (seed, split, index): no files, no download, the
same pixels on every machine and in every worker. Each image has a random background and a random,
clearly different foreground colour, a random position, size and orientation, and pixel noise, so
the classes are learnable but not by a single pixel statistic. The classes stay distinct down to
16x16 pixels, the default models' input size. Rendering a 37x37 image takes ~0.1 ms
(numpy on one core), small next to a training step, since data loading shares the CPU with training.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

# (id, human-readable name) in label order.
CLASSES: tuple[tuple[str, str], ...] = (
    ("disc", "filled disc"),
    ("ring", "ring"),
    ("square", "filled square"),
    ("triangle", "filled triangle"),
    ("cross", "plus-shaped cross"),
    ("hstripes", "horizontal stripes"),
    ("vstripes", "vertical stripes"),
    ("dstripes", "diagonal stripes"),
    ("checkerboard", "checkerboard"),
    ("dots", "grid of dots"),
)

# Per-channel statistics of the rendered pixels in [0, 1], measured over 4096 train images
# (`python -m training.synthetic`); colours are uniform, so both are close to 0.5 and 0.29.
MEAN = (0.502, 0.502, 0.494)
STD = (0.291, 0.292, 0.291)

_SPLITS = {"train": 0, "val": 1}


def _mask(label: int, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean foreground mask on the [-1, 1]^2 grid (x, y) for class `label`."""
    if label <= 4:  # shapes: random centre, size and rotation, always inside the frame
        cx, cy = rng.uniform(-0.1, 0.1, size=2)
        r = rng.uniform(0.5, 0.7)
        # Squares stand upright (+-15 degrees): turned further they become diamonds, which at the
        # 4-8 px the ImageNet stem's 4x downsampling leaves of a small image look like discs.
        t = rng.uniform(-np.pi / 12, np.pi / 12) if label == 2 else rng.uniform(0, 2 * np.pi)
        u = (x - cx) * np.cos(t) + (y - cy) * np.sin(t)
        v = -(x - cx) * np.sin(t) + (y - cy) * np.cos(t)
        d = np.hypot(u, v)
        if label == 0:
            return d < r
        if label == 1:
            return (d < r) & (d > 0.55 * r)
        if label == 2:  # the disc of the same r fits inside: the two differ by the corners
            return np.maximum(np.abs(u), np.abs(v)) < r
        if label == 3:  # three half-planes at 120 degrees make an equilateral triangle
            angles = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
            inside = [u * np.cos(a) + v * np.sin(a) < 0.5 * r for a in angles]
            return inside[0] & inside[1] & inside[2]
        arm = 0.35 * r  # arms 3-4 px wide at 16 px: thinner ones vanish in the stem
        return ((np.abs(u) < arm) & (np.abs(v) < r)) | ((np.abs(v) < arm) & (np.abs(u) < r))
    # textures: random period and phase, orientation fixed up to a small jitter
    period = rng.uniform(0.4, 0.7)
    phase = rng.uniform(0, 2 * np.pi)
    jitter = rng.uniform(-0.15, 0.15)
    xs, ys = x + jitter * y, y - jitter * x
    if label == 5:
        return np.sin(2 * np.pi * ys / period + phase) > 0
    if label == 6:
        return np.sin(2 * np.pi * xs / period + phase) > 0
    if label == 7:
        direction = rng.choice((-1.0, 1.0))
        return np.sin(2 * np.pi * (xs + direction * ys) / period + phase) > 0
    if label == 8:  # cells one period wide; finer ones blur into diagonal stripes at low resolution
        return np.sin(np.pi * xs / period + phase) * np.sin(np.pi * ys / period + phase) > 0
    ox, oy = rng.uniform(0, period, size=2)
    return np.hypot((xs + ox) % period - period / 2, (ys + oy) % period - period / 2) < 0.25 * period


def render(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, int]:
    """One (HxWx3 uint8 image, label) pair; a pure function of its arguments."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    label = index % len(CLASSES)
    rng = np.random.default_rng((seed, _SPLITS[split], index))
    background = rng.uniform(0, 1, size=3)
    foreground = rng.uniform(0, 1, size=3)
    while np.abs(foreground - background).sum() < 0.6:  # keep the figure visible
        foreground = rng.uniform(0, 1, size=3)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(grid, grid)
    mask = _mask(label, x, y, rng)[..., None]
    image = np.where(mask, foreground, background) + rng.normal(0, 0.04, size=(size, size, 3))
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), label


class SyntheticDataset(Dataset):
    """`length` images of side `size`, labels cycling through CLASSES; items are (PIL or transformed, label)."""

    def __init__(self, seed: int, split: str, length: int, size: int, transform=None):
        if length < 1 or size < 8:
            raise ValueError(f"synthetic set needs length >= 1 and size >= 8, got {length} and {size}")
        self.seed, self.split, self.length, self.size, self.transform = seed, split, length, size, transform
        self.class_ids = [c[0] for c in CLASSES]
        self.class_names = [c[1] for c in CLASSES]
        self.targets = [i % len(CLASSES) for i in range(length)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        pixels, label = render(self.seed, self.split, index, self.size)
        image = Image.fromarray(pixels, "RGB")
        return (self.transform(image) if self.transform else image), label


if __name__ == "__main__":
    # python -m training.synthetic  -> prints the channel statistics quoted above
    images = np.stack([render(0, "train", i, 37)[0] for i in range(4096)]).astype(np.float64) / 255
    print("mean", images.mean(axis=(0, 1, 2)).round(3), "std", images.std(axis=(0, 1, 2)).round(3))
