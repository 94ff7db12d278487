"""The synthetic image set: ten honestly named classes of shapes and textures, drawn on the fly.

Image `index` of a split is a pure function of (seed, split, index): no files, no download, the
same pixels on every machine and in every worker. Each image has a random background and a random,
clearly different foreground colour, a random position, size and orientation, and pixel noise, so
the classes are learnable but not by a single pixel statistic. The classes stay distinct down to
16x16 pixels, the default models' input size. Costs and statistics: docs/training.md.

Two variants, same classes and colours:
  `render`         the figure fills most of the frame (a shape) or all of it (a texture);
  `render_placed`  for localisation: the object covers at most a quarter of the image, at a
                   uniformly random position fully inside it, on a plain background, and comes with
                   its bounding box. A texture class draws its texture inside that box only.

Only numpy and PIL: the service's calibration renders these images without torch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

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
CLASS_IDS: tuple[str, ...] = tuple(c[0] for c in CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(c[1] for c in CLASSES)
SHAPES = 5  # labels below this are shapes, the rest textures

# Per-channel statistics of the rendered pixels in [0, 1] (`python -m imagesets.synthetic`);
# colours are uniform, so both are close to 0.5 and 0.29, for either variant.
MEAN = (0.502, 0.502, 0.494)
STD = (0.291, 0.292, 0.291)

NOISE = 0.04  # std of the Gaussian pixel noise, in [0, 1] units
MIN_SIZE = 8  # the smallest image side either variant draws
SPLITS = {"train": 0, "val": 1}
# Seeds of the placed variant are drawn from a stream apart from `render`'s.
_PLACED_STREAM = 1


def _shape_mask(label: int, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of shape `label` on the grid (x, y); it stays inside [-1, 1]^2 whatever rng draws."""
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


def _texture_mask(label: int, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of texture `label` on the grid (x, y): random period and phase, orientation
    fixed up to a small jitter."""
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


def _mask(label: int, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _shape_mask(label, x, y, rng) if label < SHAPES else _texture_mask(label, x, y, rng)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of a size x size image on [-1, 1]^2."""
    line = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(line, line)


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    background = rng.uniform(0, 1, size=3)
    foreground = rng.uniform(0, 1, size=3)
    while np.abs(foreground - background).sum() < 0.6:  # keep the figure visible
        foreground = rng.uniform(0, 1, size=3)
    return background, foreground


def _paint(mask: np.ndarray, background, foreground, rng: np.random.Generator, noise: float) -> np.ndarray:
    image = np.where(mask[..., None], foreground, background)
    if noise:
        image = image + rng.normal(0, noise, size=image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _check(split: str, size: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if size < MIN_SIZE:
        raise ValueError(f"image size must be >= {MIN_SIZE} pixels, got {size}")


def render(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, int]:
    """One (HxWx3 uint8 image, label) pair; a pure function of its arguments."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    label = index % len(CLASSES)
    rng = np.random.default_rng((seed, SPLITS[split], index))
    background, foreground = _colours(rng)
    x, y = _grid(size)
    return _paint(_mask(label, x, y, rng), background, foreground, rng, NOISE), label


def render_placed(seed: int, split: str, index: int, size: int, noise: float = NOISE
                  ) -> tuple[np.ndarray, int, tuple[int, int, int, int]]:
    """One (HxWx3 uint8 image, label, box) of the localisation variant; a pure function of its arguments.

    The box (x0, y0, x1, y1) is in pixels, x1 and y1 exclusive as in PIL's `Image.crop`: the
    tight bounds of the object's pixels, so every pixel outside it is background (plus noise).
    The object is drawn in a square of side max(4, size/4) ... size/2 pixels at a uniformly random position fully
    inside the image, so the box covers at most a quarter of the image. A shape is drawn inside
    that square; a texture fills it (its period measured on the whole image, so it reads the same
    as in `render`). `noise` 0 gives exact colours (the tests compare pixels with it).
    """
    _check(split, size)
    label = index % len(CLASSES)
    rng = np.random.default_rng((seed, SPLITS[split], index, _PLACED_STREAM))
    background, foreground = _colours(rng)
    side = int(rng.integers(max(4, size // 4), size // 2 + 1))  # 4 px: the smallest square a shape reads in
    x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    x, y = _grid(size)
    inside = np.zeros((size, size), dtype=bool)
    inside[y0:y0 + side, x0:x0 + side] = True
    for _ in range(64):  # a thin shape can fall between the pixel centres of a small square: redraw
        if label < SHAPES:
            # the square's own [-1, 1]^2 grid, so the shape scales with the square
            u, v = (x + 1) * size / 2, (y + 1) * size / 2
            mask = _shape_mask(label, (u - x0) / side * 2 - 1, (v - y0) / side * 2 - 1, rng) & inside
        else:
            mask = _texture_mask(label, x, y, rng) & inside
        if mask.any():
            break
    else:
        raise AssertionError(f"no pixel drawn for class {label} in a {side}-pixel square")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return _paint(mask, background, foreground, rng, noise), label, box


def placed(seed: int, split: str, size: int, length: int
           ) -> Iterator[tuple[Image.Image, int, tuple[int, int, int, int]]]:
    """(PIL RGB image, label, box) for images 0 ... length-1 of the localisation variant."""
    for index in range(length):
        pixels, label, box = render_placed(seed, split, index, size)
        yield Image.fromarray(pixels, "RGB"), label, box


if __name__ == "__main__":
    # python -m imagesets.synthetic  -> the channel statistics quoted above, for both variants
    for name, draw in (("render", render), ("render_placed", render_placed)):
        images = np.stack([draw(0, "train", i, 37)[0] for i in range(4096)]).astype(np.float64) / 255
        print(name, "mean", images.mean(axis=(0, 1, 2)).round(3), "std", images.std(axis=(0, 1, 2)).round(3))
