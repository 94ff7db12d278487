"""Request bodies: real JPEG files of realistic sizes, cut from the real photos of bench/photos.py
(scikit-image's bundled sample photographs).

- `photo`: about 500x375, the typical ImageNet photo: each source photo center-cropped to 4:3 and
  resized to 500x375, JPEG quality 90 (one file per photo; the load generator posts them in turn).
- `12mp`: a 4000x3000 phone-camera-sized JPEG. The largest photo here is 741x500, so it is upscaled
  (bicubic) with mild sensor-like grain added; without grain an upscaled picture compresses to a
  fraction of a real 12 MP photo's 3 to 5 MB and decodes faster than one.

    python -m bench.payloads results/payloads
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from artifact import write_atomically
from bench import photos

PHOTOS = photos.PHOTOS
KINDS = ("photo", "12mp")  # payload names, in the order the bench runs them
DESCRIPTIONS = {
    "photo": "500x375 JPEG q90, three real photos in turn",
    "12mp": "4000x3000 JPEG q90, a real photo upscaled with grain",
}
QUALITY = 90
GRAIN_SIGMA = 4.0  # standard deviation of the added grain, in 8-bit levels


def build(out: Path, kinds=KINDS, images: Path | None = None) -> dict[str, list[Path]]:
    """Write out/<kind>-<n>.jpg for each kind (reused when present); kind -> its files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown payload {sorted(unknown)}; expected some of {', '.join(KINDS)}")
    images = photos.folder() if images is None else Path(images)
    files = {}
    for kind in kinds:
        sources = PHOTOS if kind == "photo" else PHOTOS[:1]
        files[kind] = []
        for index, name in enumerate(sources):
            path = out / f"{kind}-{index}.jpg"
            if not path.is_file():
                with Image.open(images / name) as photo:
                    _write(path, _make(kind, photo.convert("RGB")))
            files[kind].append(path)
    return files


def _make(kind: str, photo: Image.Image) -> Image.Image:
    if kind == "photo":
        return _crop(photo, 4, 3).resize((500, 375), Image.Resampling.LANCZOS)
    big = _crop(photo, 4, 3).resize((4000, 3000), Image.Resampling.BICUBIC)
    grain = np.random.default_rng(0).normal(0.0, GRAIN_SIGMA, size=(3000, 4000, 1)).astype(np.float32)
    return Image.fromarray(np.clip(np.asarray(big, dtype=np.float32) + grain, 0, 255).astype(np.uint8))


def _crop(image: Image.Image, w: int, h: int) -> Image.Image:
    """The largest centered w:h box of the image."""
    width, height = image.size
    if width * h > height * w:
        new = height * w // h
        return image.crop(((width - new) // 2, 0, (width - new) // 2 + new, height))
    new = width * h // w
    return image.crop((0, (height - new) // 2, width, (height - new) // 2 + new))


def _write(path: Path, image: Image.Image) -> None:
    write_atomically(path, lambda f: image.save(f, "JPEG", quality=QUALITY))


if __name__ == "__main__":
    for kind, paths in build(Path(sys.argv[1] if len(sys.argv) > 1 else "results/payloads")).items():
        print(kind, *(f"{p} ({p.stat().st_size / 1e3:.0f} kB)" for p in paths))
