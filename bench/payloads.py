"""Request bodies: real JPEG files of realistic sizes, cut from the real photos of bench/photos.py
(scikit-image's bundled sample photographs), and the same photos as a model's own input.

- `photo`: about 500x375, the typical ImageNet photo: each source photo center-cropped to 4:3 and
  resized to 500x375, JPEG quality 90 (one file per photo; the load generator posts them in turn).
- `12mp`: a 4000x3000 phone-camera-sized JPEG. The largest photo here is 741x500, so it is upscaled
  (bicubic) with mild sensor-like grain added; without grain an upscaled picture compresses to a
  fraction of a real 12 MP photo's 3 to 5 MB and decodes faster than one.
- `pixels`: the `photo` files decoded and preprocessed ahead (artifact.preprocess.prepare, what the
  service's decode pool does), saved per model as .npy in the model's input dtype and shape, and
  sent as its input tensor through the Open Inference Protocol (bench/oip.py): nothing is decoded
  on the server, so the service against raw ONNX Runtime measures the serving path alone.
- `pixels8`: the same, eight images in one request (a tensor with a batch axis of 8), as a client
  that batches its own requests sends them (Triton's perf_analyzer -b 8): the HTTP work of one
  request is shared by eight images.

    python -m bench.payloads results/payloads
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from artifact import Preprocessing, preprocess, write_atomically
from bench import photos

JPEGS = ("photo", "12mp")  # payloads that are image files, posted as they are
PIXELS_PER_REQUEST = {"pixels": 1, "pixels8": 8}  # payloads of preprocessed pixels: images in one request
KINDS = (*JPEGS, *PIXELS_PER_REQUEST)  # every payload name, in the order the bench runs them
DEFAULT_KINDS = ("photo", "12mp", "pixels")  # what resnet-bench measures unless told: one image a request
PIXELS_FROM = "photo"  # the JPEGs that the pixels payload holds, preprocessed
DESCRIPTIONS = {
    "photo": "500x375 JPEG q90, three real photos in turn",
    "12mp": "4000x3000 JPEG q90, a real photo upscaled with grain",
    "pixels": "the photo payload preprocessed ahead: the model's input tensor over OIP, no decode",
    "pixels8": "the pixels payload, 8 images per OIP request (batch axis 8)",
}
QUALITY = 90
GRAIN_SIGMA = 4.0  # standard deviation of the added grain, in 8-bit levels


def build(out: Path, kinds=JPEGS, images: Path | None = None) -> dict[str, list[Path]]:
    """Write out/<kind>-<n>.jpg for each JPEG kind (reused when present); kind -> its files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(kinds) - set(JPEGS)
    if unknown:
        raise ValueError(f"unknown JPEG payload {sorted(unknown)}; expected some of {', '.join(JPEGS)}")
    images = photos.folder() if images is None else Path(images)
    files = {}
    for kind in kinds:
        sources = photos.PHOTOS if kind == "photo" else photos.PHOTOS[:1]
        files[kind] = []
        for index, name in enumerate(sources):
            path = out / f"{kind}-{index}.jpg"
            if not path.is_file():
                with Image.open(images / name) as photo:
                    _write(path, _make(kind, photo.convert("RGB")))
            files[kind].append(path)
    return files


def jpegs_for(folder: Path, kinds: tuple[str, ...]) -> dict[str, list[Path]]:
    """The JPEG payloads asked for, and the ones the pixels payload is made from."""
    wanted = {kind for kind in kinds if kind in JPEGS}
    if set(kinds) & set(PIXELS_PER_REQUEST):
        wanted.add(PIXELS_FROM)
    return build(folder, [kind for kind in JPEGS if kind in wanted])


def pixels(out: Path, jpegs: list[Path], model: str, prep: Preprocessing, dtype, max_pixels: int,
           per_request: int = 1) -> list[Path]:
    """Write out/pixels-<model>-<n>.npy: each JPEG as one image of the model's input (no batch axis),
    made as the service makes it from the same file; the files, in the JPEGs' order. With
    `per_request` > 1, one file out/pixels<per_request>-<model>.npy holds that many of them, the
    JPEGs in turn, on a batch axis."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = [preprocess.prepare(Path(jpeg).read_bytes(), prep, max_pixels).astype(dtype, copy=False) for jpeg in jpegs]
    if per_request > 1:
        named = {f"pixels{per_request}-{model}.npy": np.stack([arrays[i % len(arrays)] for i in range(per_request)])}
    else:
        named = {f"pixels-{model}-{index}.npy": array for index, array in enumerate(arrays)}
    files = []
    for name, array in named.items():
        write_atomically(out / name, lambda f, array=array: np.save(f, array, allow_pickle=False))
        files.append(out / name)
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
