"""service.api.explain: raw class activation maps and embeddings become what an answer carries, on real photos."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from artifact import ModelCard, Preprocessing
from artifact.preprocess import crop_box, prepare
from service.api import explain
from tests.service.conftest import PHOTOS, encode, photo

PREP = Preprocessing.for_input_size(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _peaked(side: int, row: int, col: int) -> np.ndarray:
    """A raw map with its maximum at (row, col), falling off with distance, and negative values too."""
    r, c = np.mgrid[:side, :side]
    return (3.0 - np.hypot(r - row, c - col)).astype(np.float32)


def test_a_map_is_normalised_to_0_1_and_survives_its_json_encoding():
    raw = _peaked(7, 2, 5)
    heat = explain.heatmap(raw)
    assert heat.located and heat.size == (7, 7)
    assert heat.values.min() == 0.0 and heat.values.max() == 1.0
    assert np.unravel_index(heat.values.argmax(), (7, 7)) == (2, 5)
    encoded = heat.to_json()
    assert encoded["size"] == [7, 7] and encoded["located"] is True and len(encoded["values"]) == 68  # 49 bytes
    decoded = explain.decode(encoded)
    assert np.abs(decoded - heat.values).max() <= 0.5 / 255 + 1e-7
    assert np.unravel_index(decoded.argmax(), (7, 7)) == (2, 5)


@pytest.mark.parametrize("raw", [np.array([[4.2]]), np.full((7, 7), -1.5, dtype=np.float32)])
def test_a_1x1_or_flat_map_is_a_constant_map_that_carries_no_location(raw):
    heat = explain.heatmap(raw)
    assert heat.located is False
    assert heat.size == raw.shape and (heat.values == 1.0).all()
    assert heat.to_json()["located"] is False


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 2)), np.array([[np.nan, 1.0]]), np.zeros((0, 3))])
def test_a_map_that_is_not_2d_finite_is_refused(bad):
    with pytest.raises(explain.MapError):
        explain.heatmap(bad)


def test_an_encoded_map_of_the_wrong_length_is_refused():
    with pytest.raises(explain.MapError, match="holds 49 bytes, got 3"):
        explain.decode({"size": [7, 7], "values": "AAAA"})


def test_class_map_finds_a_class_among_the_top_k_or_says_none():
    cam = np.stack([_peaked(7, i, i) for i in range(3)])
    np.testing.assert_array_equal(explain.class_map(cam, np.array([4, 9, 1]), 9), cam[1])
    assert explain.class_map(cam, np.array([4, 9, 1]), 2) is None


@pytest.mark.parametrize("name", PHOTOS)
def test_the_overlay_colours_the_crop_the_model_saw_hot_where_the_map_peaks(name):
    image = photo(name).convert("RGB")
    heat = explain.heatmap(_peaked(7, 0, 6))  # hot in the top-right corner, cold bottom-left
    out = explain.overlay(heat, image, PREP)
    scale = min(1.0, explain.MAX_SIDE / max(image.size))
    assert out.size == (round(image.width * scale), round(image.height * scale))
    left, top, right, bottom = (round(v * scale) for v in crop_box(image.width, image.height, PREP))
    pixels = np.asarray(out, dtype=np.int32)
    base = np.asarray(image.resize(out.size, Image.Resampling.BILINEAR) if scale < 1 else image, dtype=np.int32)
    hot, cold = pixels[top + 2, right - 3] - base[top + 2, right - 3], pixels[bottom - 3, left + 2] - base[bottom - 3, left + 2]
    assert hot[0] > hot[2] and cold[2] > cold[0]  # the jet map: red where it peaks, blue where it is lowest
    if left > 0:  # outside the crop: the image, dimmed, no colour
        np.testing.assert_allclose(pixels[:, : left - 1], np.round(base[:, : left - 1] * 0.5), atol=1)
    if top > 0:
        np.testing.assert_allclose(pixels[: top - 1], np.round(base[: top - 1] * 0.5), atol=1)


def test_an_overlay_of_the_crop_itself_covers_all_of_it():
    pixels = replace(PREP, input_dtype="uint8", layout="NHWC")  # the crop a pixel-input model receives
    crop = Image.fromarray(prepare(encode(photo(PHOTOS[1]).convert("RGB")), pixels, 50_000_000))
    out = np.asarray(explain.overlay(explain.heatmap(_peaked(7, 6, 0)), crop, None), dtype=np.int32)
    base = np.asarray(crop, dtype=np.int32)
    assert out.shape == base.shape
    hot, cold = out[220, 3] - base[220, 3], out[3, 220] - base[3, 220]  # bottom-left peak, top-right low
    assert hot[0] > hot[2] and cold[2] > cold[0]


def test_the_overlay_png_is_a_png_of_the_overlay():
    image = photo(PHOTOS[0]).convert("RGB")
    heat = explain.heatmap(_peaked(7, 3, 3))
    data = explain.overlay_png(heat, image, PREP)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "PNG"
    np.testing.assert_array_equal(np.asarray(decoded.convert("RGB")), np.asarray(explain.overlay(heat, image, PREP)))


def test_the_embedding_is_l2_normalised_and_keeps_its_direction():
    vector = np.array([3.0, 0.0, 4.0], dtype=np.float32)
    out = explain.embedding(vector)
    assert out == pytest.approx([0.6, 0.0, 0.8])
    assert explain.embedding(np.zeros(4)) == [0.0] * 4
    with pytest.raises(explain.MapError):
        explain.embedding(np.zeros((2, 2)))


def test_a_real_model_on_real_photos_gives_maps_heatmaps_and_unit_embeddings(tiny_models_dir):
    sess = ort.InferenceSession(str(tiny_models_dir / "resnet20" / "model.onnx"), providers=["CPUExecutionProvider"])
    card = ModelCard.from_metadata(sess.get_modelmeta().custom_metadata_map)
    images = [photo(name).convert("RGB") for name in PHOTOS]
    batch = np.stack([prepare(encode(image), card.preprocessing, 50_000_000) for image in images])
    logits, embeddings, cams, classes = sess.run(["logits", "embedding", "cam", "cam_classes"], {"input": batch})
    for image, row, emb, cam, cls in zip(images, logits, embeddings, cams, classes):
        top = int(row.argmax())
        heat = explain.heatmap(explain.class_map(cam, cls, top))
        assert heat.size == card.cam_size == (8, 8) and heat.located
        assert explain.decode(heat.to_json()).shape == (8, 8)
        png = Image.open(io.BytesIO(explain.overlay_png(heat, image, card.preprocessing)))
        scale = min(1.0, explain.MAX_SIDE / max(image.size))
        assert png.size == (round(image.width * scale), round(image.height * scale))
        unit = np.array(explain.embedding(emb))
        assert unit.shape == (card.embedding_size,) and abs(np.linalg.norm(unit) - 1) < 1e-5
