"""The example images of the page at `/` (service/web/static/examples/): two of the synthetic set the
default models are trained on, and two real photos from scikit-image's wheel, both CC0 by their
photographers (Stefan van der Walt's cat, Rachel Michetti's coffee cup; skimage.data's docstrings).

    python -m bench.page.examples service/web/static/examples
"""

from __future__ import annotations

import argparse
import io
from importlib.resources import files
from pathlib import Path

from PIL import Image

from artifact import write_atomically

SYNTHETIC = {"ring.png": 1, "checkerboard.png": 8}  # file -> index in the val split (its label is index % 10)
PHOTOS = {"cat.jpg": "chelsea.png", "coffee.jpg": "coffee.png"}  # file -> scikit-image's photo
SIDE = 160  # the synthetic images' side, px; the photos keep their aspect at this height
PHOTO_HEIGHT = 240


def examples() -> dict[str, bytes]:
    """The example files, by name: PNGs of the synthetic set (val split, seed 0), JPEG photos."""
    from training.synthetic import render  # torch comes with it: only this script pays for it

    out = {}
    for name, index in SYNTHETIC.items():
        out[name] = _encode(Image.fromarray(render(0, "val", index, SIDE)[0]), "PNG")
    for name, source in PHOTOS.items():
        with Image.open(str(files("skimage") / "data" / source)) as photo:
            width = round(photo.width * PHOTO_HEIGHT / photo.height)
            out[name] = _encode(photo.convert("RGB").resize((width, PHOTO_HEIGHT), Image.LANCZOS), "JPEG", quality=85)
    return out


def _encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, optimize=True, **options)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.page.examples", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the example images into")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    for name, content in examples().items():
        write_atomically(out / name, lambda f, content=content: f.write(content))
        print(f"{out / name}: {len(content)} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
