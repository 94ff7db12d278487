"""Real photographs for the tests and the bench, from the sample data inside scikit-image's wheel.

The files sit in the installed package (`skimage/data/`), so a clone anywhere has them after
`make install` with nothing downloaded at run time and nothing read from outside the repository.
They are distributed under scikit-image's data licence (skimage/data/README.txt in the wheel names
each image's source and terms).

| name | format | mode | size |
| --- | --- | --- | --- |
| motorcycle_right.png | PNG | RGB | 741x500 |
| color.png | PNG | RGB | 371x370 |
| coins.png | PNG | L (grayscale) | 384x303 |
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PHOTOS = ("motorcycle_right.png", "color.png", "coins.png")  # the photos tests and bench post, in order


def folder() -> Path:
    """The folder that holds the photos: scikit-image's bundled data, found without importing skimage."""
    path = Path(str(files("skimage") / "data"))
    missing = [name for name in PHOTOS if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lacks {', '.join(missing)}: install the bench extra (make install)")
    return path


def path(name: str) -> Path:
    """One photo's file; `name` is one of PHOTOS."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; expected one of {', '.join(PHOTOS)}")
    return folder() / name