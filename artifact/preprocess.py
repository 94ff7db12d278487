"""Image bytes to network input, as the model's card says, with Pillow and numpy only.

The recipe is torchvision's evaluation transform on PIL images, which the exporter records in each
model's `Preprocessing`: Resize(resize_size) of the shorter side, CenterCrop(input_size), ToTensor,
Normalize(mean, std). Sizes and offsets follow torchvision 0.29's code (transforms/functional.py):
the longer side is `int(resize_size * long / short)` (truncated, not rounded) and the crop starts at
`int(round((h - input_size) / 2.0))`. Parity with torchvision is tested on real photos
(tests/service/test_preprocess.py).

Before that, decoding is made safe and fast: only raster formats are opened (never PDF/EPS, which
would start Ghostscript); the pixel count is checked from the header before any pixel is decoded;
large JPEGs are decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (draft mode: measured in
docs/performance-per-image.md); EXIF orientation is applied; every mode becomes 8-bit RGB.

What comes out is what the model's `Preprocessing` asks for: a format-2 card's model takes the
cropped uint8 RGB pixels, [S, S, 3] per image, and normalises inside its graph, so no float work
happens here; format-1 files take float32 [3, S, S], normalised here.

Export's verification, resnet-calibrate and the service all call this module, so the pixels a model
was checked on are the pixels it is served.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from artifact.card import Preprocessing


class ImageError(ValueError):
    """The bytes cannot become the model's input; the message says why (the service answers 4xx)."""


class BadImage(ImageError):
    """Not a decodable raster image: empty, corrupt, truncated, or another format."""


class TooManyPixels(ImageError):
    """The header announces more than `max_pixels`: refused before a pixel is decoded."""

    def __init__(self, message: str, *, max_pixels: int) -> None:
        super().__init__(message)
        self.max_pixels = max_pixels

# Formats we decode, as Pillow names them (the JPEG opener also reads MPO, the multi-picture JPEG
# some phones write). Pillow registers its plugins lazily: init() loads them all now, so
# open(formats=...) finds each one (a Pillow built without WebP simply lacks it).
Image.init()
FORMATS = tuple(f for f in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP") if f in Image.OPEN)
# Declared media types we accept; the bytes are sniffed anyway, so a mislabelled file still decodes.
MEDIA_TYPES = frozenset(
    {
        "image/jpeg", "image/jpg", "image/pjpeg", "image/mpo", "image/png", "image/gif", "image/bmp",
        "image/x-ms-bmp", "image/tiff", "image/webp", "application/octet-stream",
    }
)  # fmt: skip
# A JPEG is drafted down to a shorter side of at least DRAFT_HEADROOM * resize_size, so the final
# resize still filters from a larger image (test_jpeg_draft_stays_close_to_the_full_decode); 1 would
# triple the error for 13% less time (docs/performance-per-image.md).
DRAFT_HEADROOM = 2
RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
# EXIF orientation tag value -> the transpose that shows the image upright (as ImageOps.exif_transpose).
ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112


def decode(data: bytes, max_pixels: int, min_side: int | None = None) -> Image.Image:
    """Bytes to an upright 8-bit RGB image; JPEGs are drafted down to a shorter side >= min_side."""
    if not data:
        raise BadImage("the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as error:
        raise TooManyPixels(f"the image header announces too many pixels: {error}", max_pixels=max_pixels) from None
    except UnidentifiedImageError:
        raise BadImage(f"cannot identify the image ({len(data)} bytes) as one of {', '.join(FORMATS)}") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise BadImage(f"cannot read the image header ({len(data)} bytes): {error}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise TooManyPixels(
            f"the image is {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}",
            max_pixels=max_pixels,
        )
    if width < 1 or height < 1:
        raise BadImage(f"the image has no pixels ({width}x{height})")
    try:
        if min_side is not None and image.format in ("JPEG", "MPO"):
            image.draft("RGB", (min_side, min_side))
        image.load()  # the first frame of an animated image
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation in ORIENTATION:
            image = image.transpose(ORIENTATION[orientation])
        return to_rgb(image)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise BadImage(f"the {image.format} image is corrupt or truncated: {error}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha composited over white, 16-bit samples scaled, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        # Pillow's convert clips 16-bit samples at 255 (an almost white picture): keep the top 8 bits
        # of 16-bit data instead; 32-bit or float data at most 255 is taken as 8-bit already.
        samples = np.asarray(image)
        if image.mode.startswith("I;16") or samples.max(initial=0) > 255:
            samples = np.clip(samples, 0, 65535).astype(np.uint32) >> 8
        gray = np.clip(samples, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")  # uint8 2-D: mode L
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        # Transparent pixels hold arbitrary colour (often black); show them as a viewer on a white
        # page would, rather than as whatever the encoder left there.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")  # L, P, 1, CMYK, YCbCr, LAB, HSV


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after torchvision's Resize(size) on the shorter side."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)  # as torchvision: truncated
    return (new_short, new_long) if width <= height else (new_long, new_short)


def crop_box(width: int, height: int, prep: Preprocessing) -> tuple[float, float, float, float]:
    """The center crop of torchvision's Resize + CenterCrop, in the source image's coordinates."""
    new_width, new_height = resized_size(width, height, prep.resize_size)
    side = prep.input_size
    top = int(round((new_height - side) / 2.0))
    left = int(round((new_width - side) / 2.0))
    scale_x, scale_y = width / new_width, height / new_height
    return (left * scale_x, top * scale_y, (left + side) * scale_x, (top + side) * scale_y)


def crop_resized(image: Image.Image, prep: Preprocessing, exact: bool = False) -> Image.Image:
    """Resize(resize_size) then CenterCrop(input_size); unless `exact`, as one resample of only the
    cropped pixels.

    Pillow's resize with a `box` places each output pixel's filter where the full resize would (same
    scale, same centres, clipped at the source image's edges, not the box's), so it computes the same
    picture without the ~40% of a 256-px resize that the crop throws away and without the intermediate
    image. The centres differ from the full resize's in the last bits of a double, which moves a
    rounded pixel by at most one level now and then (measured in docs/performance-per-image.md).
    Nearest-neighbour always takes the exact path: there the last bit picks another source pixel."""
    width, height = image.size
    side = prep.input_size
    new_width, new_height = resized_size(width, height, prep.resize_size)
    if (new_width, new_height) == (width, height):  # torchvision skips the resize
        pass
    elif exact or prep.interpolation == "nearest":
        image = image.resize((new_width, new_height), RESAMPLING[prep.interpolation])
    else:
        return image.resize((side, side), RESAMPLING[prep.interpolation], box=crop_box(width, height, prep))
    top = int(round((new_height - side) / 2.0))
    left = int(round((new_width - side) / 2.0))
    return image.crop((left, top, left + side, top + side))


def to_input(image: Image.Image, prep: Preprocessing, exact: bool = False) -> np.ndarray:
    """An RGB image to one image of the network's input: prep.input_dtype in prep.layout, no batch.

    For "uint8" this is the cropped pixels and nothing else: the graph casts and normalises, so
    the service does no float work per pixel. "float32" is a format-1 file's input."""
    pixels = np.asarray(crop_resized(image, prep, exact))  # [S, S, 3] uint8, a fresh copy of Pillow's buffer
    if prep.input_dtype == "float32":
        # ToTensor then Normalize, folded into one multiply-add: x / 255 / std - mean / std.
        scale = 1.0 / (255.0 * np.asarray(prep.std, dtype=np.float32))
        offset = np.asarray(prep.mean, dtype=np.float32) / np.asarray(prep.std, dtype=np.float32)
        pixels = pixels.astype(np.float32)
        pixels *= scale
        pixels -= offset
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)) if prep.layout == "NCHW" else pixels


def prepare(data: bytes, prep: Preprocessing, max_pixels: int, draft: bool = True) -> np.ndarray:
    """Image bytes to one image of the network's input (`to_input`): decode, resize and crop, and for
    float32 models normalise. Every caller (the pipeline, a calibrator, a route taking pixels) gets
    what the model wants from the card's own `Preprocessing`, whatever its dtype and layout.

    `draft` allows the two measured shortcuts, the JPEG draft and the cropped resize; False gives
    torchvision's own pixels (tests/service/test_preprocess.py holds both to their tolerances)."""
    image = decode(data, max_pixels, DRAFT_HEADROOM * prep.resize_size if draft else None)
    return to_input(image, prep, exact=not draft)


def random_batch(prep: Preprocessing, batch: int, seed: int = 0) -> np.ndarray:
    """Seeded stand-in input of the model's dtype and layout, for warm-ups and benchmarks: uniform
    pixels for uint8, standard normal values (normalised images' scale) for float32."""
    rng = np.random.default_rng(seed)
    if prep.input_dtype == "uint8":
        return rng.integers(0, 256, size=prep.input_shape(batch), dtype=np.uint8)
    return rng.standard_normal(prep.input_shape(batch), dtype=np.float32)
