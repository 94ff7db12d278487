"""Preprocessing: parity with torchvision on the real photos, JPEG draft closeness, EXIF, modes, limits.

These tests may import torch and torchvision (the reference); service/ itself never does.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageOps

from artifact import Preprocessing

from artifact.preprocess import BadImage, TooManyPixels, decode, prepare, resized_size, to_input

from .conftest import IMAGES, PHOTOS, encode, photo, png_claiming  # noqa: F401 - IMAGES documents where photos live

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LIMIT = 50_000_000
PREPS = [
    Preprocessing(224, 256, MEAN, STD, "bilinear"),  # the ImageNet evaluation recipe
    Preprocessing(32, 37, MEAN, STD, "bilinear"),  # the tiny test models
    Preprocessing(224, 256, MEAN, STD, "bicubic"),
    Preprocessing(31, 45, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0), "nearest"),  # odd sizes: crop offset rounding
]


def torchvision_reference(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    from torchvision import transforms as T

    modes = {
        "bilinear": T.InterpolationMode.BILINEAR,
        "bicubic": T.InterpolationMode.BICUBIC,
        "nearest": T.InterpolationMode.NEAREST,
    }
    transform = T.Compose(
        [T.Resize(prep.resize_size, interpolation=modes[prep.interpolation]), T.CenterCrop(prep.input_size),
         T.ToTensor(), T.Normalize(prep.mean, prep.std)]
    )  # fmt: skip
    return transform(image.convert("RGB")).numpy()


@pytest.mark.parametrize("prep", PREPS, ids=lambda p: f"{p.input_size}-{p.resize_size}-{p.interpolation}")
@pytest.mark.parametrize("name", PHOTOS)
def test_matches_torchvision_on_the_real_photos(name, prep):
    image = photo(name)
    ours = prepare(encode(image, "PNG"), prep, LIMIT, draft=False)
    expected = torchvision_reference(image, prep)
    assert ours.shape == expected.shape == (3, prep.input_size, prep.input_size)
    assert ours.dtype == np.float32
    # Same pixels: the only difference is float rounding of the folded normalisation (x/255-m)/s.
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("prep", PREPS, ids=lambda p: f"{p.input_size}-{p.resize_size}-{p.interpolation}")
@pytest.mark.parametrize("name", PHOTOS)
def test_the_cropped_resize_is_within_a_level_of_torchvision(name, prep):
    image = photo(name)
    exact = prepare(encode(image, "PNG"), replace(prep, input_dtype="uint8", layout="NHWC"), LIMIT, draft=False)
    fast = prepare(encode(image, "PNG"), replace(prep, input_dtype="uint8", layout="NHWC"), LIMIT)
    difference = np.abs(fast.astype(int) - exact.astype(int))
    # Measured on these photos: at most 1 level in at most 1% of the values (artifact/preprocess.py).
    assert difference.max() <= 1 and (difference > 0).mean() <= 0.02


@pytest.mark.parametrize("prep", PREPS[:2], ids=lambda p: f"{p.input_size}-{p.resize_size}-{p.interpolation}")
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_uint8_input_is_the_cropped_pixels_that_normalise_to_the_float_input(prep, layout):
    data = encode(photo("motorcycle_right.png").convert("RGB"), quality=90)
    pixels = prepare(data, replace(prep, input_dtype="uint8", layout=layout), LIMIT)
    side = prep.input_size
    assert pixels.dtype == np.uint8 and pixels.flags.c_contiguous
    assert pixels.shape == ((side, side, 3) if layout == "NHWC" else (3, side, side))
    chw = pixels.transpose(2, 0, 1) if layout == "NHWC" else pixels
    mean, std = (np.asarray(v, dtype=np.float32)[:, None, None] for v in (prep.mean, prep.std))
    np.testing.assert_allclose((chw / np.float32(255) - mean) / std, prepare(data, prep, LIMIT), rtol=0, atol=1e-5)


def test_resize_sizes_match_torchvision_rounding():
    from torchvision.transforms.functional import _compute_resized_output_size

    for width in (1, 7, 224, 255, 256, 257, 333, 500, 741, 1000, 4031):
        for height in (1, 3, 224, 299, 375, 500, 3024):
            for size in (32, 37, 256, 342):
                new_h, new_w = _compute_resized_output_size((height, width), [size])
                assert resized_size(width, height, size) == (new_w, new_h), (width, height, size)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """A 12 MP JPEG of real-photo detail at native resolution (a mosaic of the photos, not an upscale)."""
    tiles = [photo(name).convert("RGB") for name in PHOTOS]
    canvas, x, y, i = Image.new("RGB", (4000, 3000)), 0, 0, 0
    while y < canvas.height:
        tile = tiles[i % 3] if (i // 3) % 2 == 0 else ImageOps.mirror(tiles[i % 3])
        canvas.paste(tile, (x, y))
        x, i = x + tile.width, i + 1
        if x >= canvas.width:
            x, y = 0, y + 370
    return encode(canvas, quality=90)


def test_jpeg_draft_stays_close_to_the_full_decode(big_jpeg):
    prep = PREPS[0]
    drafted = decode(big_jpeg, LIMIT, min_side=2 * prep.resize_size)
    assert 512 <= min(drafted.size) < 1024  # decoded at 1/4 scale (750 px), not in full (3000 px)
    pixels = replace(prep, input_dtype="uint8", layout="NHWC")
    fast = prepare(big_jpeg, pixels, LIMIT)
    full = prepare(big_jpeg, pixels, LIMIT, draft=False)
    levels = np.abs(fast.astype(int) - full.astype(int))
    # Measured on this mosaic: mean 0.47, p99 2, max 6 levels of 255; the draft trades that for ~3x speed.
    assert levels.mean() < 1.0
    assert np.percentile(levels, 99) <= 4.0


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(fmt):
    image = photo("color.png").convert("RGB").crop((0, 0, 300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    decoded = decode(encode(image, fmt, exif=exif), LIMIT)
    upright = image.transpose(Image.Transpose.ROTATE_270)
    assert decoded.size == (200, 300)
    difference = np.abs(np.asarray(decoded, dtype=int) - np.asarray(upright, dtype=int))
    assert difference.max() == 0 if fmt == "PNG" else difference.mean() < 3


def test_grayscale_and_palette_images_become_rgb():
    gray = photo("coins.png")
    assert gray.mode == "L"
    decoded = decode(encode(gray, "PNG"), LIMIT)
    assert decoded.mode == "RGB"
    rgb = np.asarray(decoded)
    assert np.array_equal(rgb[..., 0], np.asarray(gray)) and np.array_equal(rgb[..., 0], rgb[..., 2])
    palette = photo("color.png").convert("P", palette=Image.Palette.ADAPTIVE)
    assert np.array_equal(np.asarray(decode(encode(palette, "PNG"), LIMIT)), np.asarray(palette.convert("RGB")))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_become_white(mode):
    image = Image.new(mode, (4, 2), (10, 20, 30, 255) if mode == "RGBA" else (40, 255))
    image.putpixel((0, 0), (10, 20, 30, 0) if mode == "RGBA" else (40, 0))
    decoded = np.asarray(decode(encode(image, "PNG"), LIMIT))
    assert decoded[0, 0].tolist() == [255, 255, 255]
    assert decoded[1, 1].tolist() == ([10, 20, 30] if mode == "RGBA" else [40, 40, 40])


def test_gif_transparency_and_the_first_frame_of_an_animation():
    red, blue = Image.new("P", (8, 8), 0), Image.new("P", (8, 8), 1)
    for frame in (red, blue):
        frame.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    red.putpixel((0, 0), 2)
    data = encode(red, "GIF", save_all=True, append_images=[blue], duration=100, transparency=2)
    decoded = np.asarray(decode(data, LIMIT))
    assert decoded[4, 4].tolist() == [255, 0, 0]  # the first frame, not the blue second one
    assert decoded[0, 0].tolist() == [255, 255, 255]  # its transparent pixel


def test_sixteen_bit_samples_keep_their_top_eight_bits():
    values = (np.arange(64 * 4, dtype=np.uint16).reshape(4, 64) * 256 + 255).astype(np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    decoded = np.asarray(decode(encode(image, "PNG"), LIMIT))
    np.testing.assert_array_equal(decoded[..., 1], (values >> 8).astype(np.uint8))  # not clipped to white


def test_cmyk_jpeg_becomes_rgb():
    decoded = decode(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95), LIMIT)
    assert decoded.mode == "RGB"
    assert np.abs(np.asarray(decoded, dtype=int) - [255, 0, 0]).max() < 12


@pytest.mark.parametrize("side", [8000, 20000])  # 64 MP over our limit; 400 MP over Pillow's own too
def test_a_decompression_bomb_is_refused_from_its_header(side):
    with pytest.raises(TooManyPixels, match="pixels"):
        decode(png_claiming(side, side), LIMIT)


def test_within_the_pixel_limit_the_same_forged_file_is_merely_corrupt():
    with pytest.raises(BadImage, match="corrupt or truncated"):
        decode(png_claiming(64, 64), LIMIT)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"%PDF-1.7\n1 0 obj\n", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"],
    ids=["empty", "text", "pdf", "eps"],
)
def test_undecodable_bytes_are_a_bad_image(data):
    with pytest.raises(BadImage):
        decode(data, LIMIT)


def test_a_truncated_jpeg_is_a_bad_image():
    data = encode(photo("motorcycle_right.png").convert("RGB"), quality=90)
    with pytest.raises(BadImage, match="corrupt or truncated"):
        prepare(data[: len(data) // 2], PREPS[1], LIMIT)


def test_to_input_is_contiguous_chw():
    array = to_input(photo("color.png").convert("RGB"), PREPS[1])
    assert array.flags.c_contiguous and array.shape == (3, 32, 32)
