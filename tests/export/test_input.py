"""The graph's input: uint8 pixels normalised inside the graph, and the float32 input of
models exported before, which the card still describes and the service still serves."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from artifact import PREFIX, ModelCard, Preprocessing
from artifact.preprocess import prepare
from tests.service.conftest import PHOTOS, encode, photo, start_server
from training import checkpoint, models

LIMIT = 50_000_000


@pytest.fixture(scope="module")
def float_model(tiny_checkpoints, tmp_path_factory):
    """resnet18 exported the pre-issue-16 way: float32 NCHW input, normalised by the caller."""
    from export.exporter import export_checkpoint

    return export_checkpoint(tiny_checkpoints["resnet18"], tmp_path_factory.mktemp("float"), name="resnet18-float",
                             input="float32", progress=False)


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _card(path) -> ModelCard:
    return ModelCard.from_metadata(_session(path).get_modelmeta().custom_metadata_map)


def test_a_version_1_card_reads_as_float32_nchw_input():
    card = ModelCard("m", "resnet18", 1, ("a",), ("A",), Preprocessing(32, 37, (0.5,) * 3, (0.25,) * 3), "fp32",
                     "0" * 64, None, None, "t", "o", "2026-01-01T00:00:00+00:00")
    props = card.to_metadata()
    old = {k: v for k, v in json.loads(props[PREFIX + "preprocessing"]).items() if k not in ("input_dtype", "layout")}
    props |= {PREFIX + "format_version": "1", PREFIX + "preprocessing": json.dumps(old)}
    read = ModelCard.from_metadata(props)
    assert (read.input_dtype, read.layout, read.preprocessing.input_shape(2)) == ("float32", "NCHW", (2, 3, 32, 32))


def test_the_pixel_graph_casts_and_normalises_before_the_first_convolution(tiny_models_dir):
    model = onnx.load(tiny_models_dir / "resnet18" / "model.onnx")
    ops = [n.op_type for n in model.graph.node]
    assert ops.index("Cast") < ops.index("Sub") < ops.index("Mul") < ops.index("Conv")
    card = _card(tiny_models_dir / "resnet18" / "model.onnx")
    assert (card.input_dtype, card.layout, card.preprocessing.input_shape(1)) == ("uint8", "NHWC", (1, 32, 32, 3))


def test_an_old_style_export_takes_normalised_float32_and_matches_torch(float_model, tiny_checkpoints):
    sess = _session(float_model)
    (node,) = sess.get_inputs()
    assert node.type == "tensor(float)" and node.shape[1:] == [3, 32, 32]
    card = _card(float_model)
    assert (card.input_dtype, card.layout) == ("float32", "NCHW")
    payload = checkpoint.load(tiny_checkpoints["resnet18"])
    net = models.build(payload["arch"], payload["num_classes"], shortcut=payload.get("shortcut"))
    net.load_state_dict(payload["model"])
    x = np.stack([prepare(encode(photo(name).convert("RGB")), card.preprocessing, LIMIT) for name in PHOTOS])
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(x)).numpy()
    (got,) = sess.run(["logits"], {"input": x})
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()


def test_pixel_and_float_graphs_of_one_checkpoint_agree(float_model, tiny_models_dir):
    pixel_path = tiny_models_dir / "resnet18" / "model.onnx"
    for name in PHOTOS:
        data = encode(photo(name).convert("RGB"), quality=90)
        (new,) = _session(pixel_path).run(["logits"], {"input": prepare(data, _card(pixel_path).preprocessing, LIMIT)[None]})
        (old,) = _session(float_model).run(["logits"], {"input": prepare(data, _card(float_model).preprocessing, LIMIT)[None]})
        # Only float rounding differs: (x - 255 mean) / (255 std) in the graph vs x / 255 / std - mean / std.
        np.testing.assert_allclose(new, old, rtol=0, atol=1e-4 * np.abs(old).max())


def test_the_service_serves_a_float32_model_beside_a_pixel_model(float_model, tiny_models_dir, tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "resnet18", folder / "resnet18")
    shutil.copytree(float_model.parent, folder / "resnet18-float")
    server = start_server(folder, tmp_path)
    try:
        data = encode(photo("motorcycle_right.png").convert("RGB"), quality=90)
        answers = {}
        for name in ("resnet18", "resnet18-float"):
            response = httpx.post(f"{server.url}/models/{name}/classify", content=data,
                                  headers={"Content-Type": "image/jpeg"}, params={"top_k": 3}, timeout=30)
            assert response.status_code == 200, response.text
            answers[name] = response.json()["predictions"]
        assert [p["class_index"] for p in answers["resnet18"]] == [p["class_index"] for p in answers["resnet18-float"]]
        for new, old in zip(answers["resnet18"], answers["resnet18-float"]):
            assert abs(new["probability"] - old["probability"]) < 1e-4
    finally:
        server.stop()
