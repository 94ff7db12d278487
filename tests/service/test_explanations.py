"""Where the model looked and what it saw, through a real server: class activation maps and embeddings
over /classify and the Open Inference Protocol, from the answering rung in the cascade, and a clear
refusal for a model exported before these outputs existed."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from service.api import explain

from .colour_models import CLEAR, png, write_ladder
from .conftest import encode, photo, start_server


def classify(server, image: bytes, **params) -> httpx.Response:
    return httpx.post(server.url + "/classify", content=image, params=params,
                      headers={"Content-Type": "image/jpeg"}, timeout=60)  # fmt: skip


def test_maps_and_embeddings_come_with_the_answer_and_cost_nothing_when_not_asked(server, references):
    image = encode(photo("coffee.png").convert("RGB"))
    plain = classify(server, image, model="resnet20").json()
    body = classify(server, image, model="resnet20", cam="true", embedding="true").json()
    assert [p["class_index"] for p in body["predictions"]] == [p["class_index"] for p in plain["predictions"]]
    assert all("cam" not in p for p in plain["predictions"]) and "embedding" not in plain
    card = references["resnet20"].card
    assert len(body["embedding"]) == card.embedding_size and abs(np.linalg.norm(body["embedding"]) - 1) < 1e-5
    for prediction in body["predictions"]:  # the graph's top 5: every one of the top 5 has its map
        heat = explain.decode(prediction["cam"])
        assert list(heat.shape) == prediction["cam"]["size"] == list(card.cam_size)
        assert prediction["cam"]["located"] and heat.min() == 0.0 and heat.max() == 1.0
    top1 = classify(server, image, model="resnet20", cam_png="true", top_k=1).json()["predictions"][0]
    with Image.open(io.BytesIO(base64.b64decode(top1["cam_png"]))) as overlay:
        assert overlay.format == "PNG" and overlay.size[0] >= card.preprocessing.input_size
    # a 1x1 map (resnet18 at 32 px: the ImageNet stem leaves one cell) is answered as carrying no location
    flat = classify(server, image, model="resnet18", cam="true", top_k=1).json()["predictions"][0]["cam"]
    assert flat["size"] == [1, 1] and flat["located"] is False
    models = {m["name"]: m["explains"] for m in httpx.get(server.url + "/models", timeout=10).json()["models"]}
    assert models == {"resnet18": ["cam", "embedding"], "resnet20": ["cam", "embedding"]}


def test_in_the_cascade_the_answering_rung_explains(server, references):
    files = [("images", (f"{i}.jpg", encode(photo(name).convert("RGB")), "image/jpeg"))
             for i, name in enumerate(("coffee.png", "astronaut.png"))]  # fmt: skip
    body = httpx.post(server.url + "/classify", params={"model": "auto", "embedding": "true"}, files=files,
                      timeout=60).json()  # fmt: skip
    for result in body["results"]:
        assert len(result["embedding"]) == references[result["model"]].card.embedding_size


def test_the_open_inference_protocol_answers_embedding_and_cam_as_named_outputs(server, references):
    image = base64.b64encode(encode(photo("coffee.png").convert("RGB"))).decode()
    request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}],
               "outputs": [{"name": "probabilities"}, {"name": "embedding"}, {"name": "cam"}, {"name": "cam_classes"}]}  # fmt: skip
    response = httpx.post(server.url + "/v2/models/resnet20/infer", content=json.dumps(request), timeout=60)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    card = references["resnet20"].card
    h, w = card.cam_size
    assert outputs["embedding"]["shape"] == [1, card.embedding_size] and outputs["embedding"]["datatype"] == "FP32"
    assert outputs["cam"]["shape"] == [1, 5, h, w] and outputs["cam_classes"]["datatype"] == "INT64"
    probabilities = np.asarray(outputs["probabilities"]["data"])
    assert outputs["cam_classes"]["data"] == np.argsort(-probabilities, kind="stable")[:5].tolist()
    metadata = httpx.get(server.url + "/v2/models/resnet20", timeout=10).json()
    assert {o["name"] for o in metadata["outputs"]} == {"probabilities", "embedding", "cam", "cam_classes"}


def test_a_model_exported_before_these_outputs_says_so(tmp_path):
    folder = write_ladder(tmp_path / "models")  # hand-built files with a format-2 card: logits only
    (tmp_path / "log").mkdir()
    server = start_server(folder, tmp_path / "log", "--providers", "cpu")
    try:
        response = httpx.post(server.url + "/classify", content=png(CLEAR[0]), params={"cam": "true"},
                              headers={"Content-Type": "image/png"}, timeout=30)  # fmt: skip
        assert response.status_code == 422 and "exported without" in response.json()["error"]["message"]
        assert httpx.get(server.url + "/models", timeout=10).json()["models"][0]["explains"] == []
        assert httpx.post(server.url + "/classify", content=png(CLEAR[0]), headers={"Content-Type": "image/png"},
                          timeout=30).status_code == 200  # fmt: skip
    finally:
        server.stop()
