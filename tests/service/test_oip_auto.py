"""`auto` (the depth cascade) through the Open Inference Protocol, on the colour ladder
(colour_models.py) whose every answer is known: the cascade's answers, which rung gave each, and the
budget, as /classify's model=auto gives them."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from .colour_models import AMBIGUOUS, CLEAR, png, write_cascade_file, write_ladder
from .conftest import start_server


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """As test_cascade's auto_server: thresholds at max_softmax 0.9, a 1 s batching delay, so that a
    budget under 1 s skips the escalation."""
    folder = write_ladder(tmp_path_factory.mktemp("oip-auto"))
    write_cascade_file(folder, thresholds=(0.9,))
    server = start_server(folder, tmp_path_factory.mktemp("oip-auto-server"), "--providers", "cpu", "--max-delay-ms", "1000")
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()
    server.stop()


def images(*files: bytes) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_))
    return tensor


TOP1 = [triton.InferRequestedOutput("probabilities", class_count=1)]


def labels(answer) -> list[str]:
    return [row[0].decode().split(":", 2)[2] for row in answer.as_numpy("probabilities")]


def test_auto_is_a_model_that_takes_image_files(client):
    metadata = client.get_model_metadata("auto")
    assert metadata["name"] == "auto" and [i["name"] for i in metadata["inputs"]] == ["image"]
    assert metadata["parameters"]["rungs"] == ["resnet18", "resnet50"]
    assert client.is_model_ready("auto") and client.is_model_ready("auto", "1")


def test_auto_answers_each_image_from_the_rung_the_cascade_reached(client):
    answer = client.infer("auto", [images(png(CLEAR[1]), png(AMBIGUOUS[1]))], outputs=TOP1)
    assert labels(answer) == ["green", "green"]
    assert answer.get_response()["model_name"] == "auto"
    assert answer.get_response()["parameters"]["answered_by"] == ["resnet18", "resnet50"]


def test_a_budget_too_small_for_the_deep_rung_keeps_the_shallow_answer(client):
    answer = client.infer("auto", [images(png(AMBIGUOUS[1]))], outputs=TOP1, parameters={"budget_ms": 500})
    assert labels(answer) == ["red"] and answer.get_response()["parameters"]["answered_by"] == ["resnet18"]


def test_auto_refuses_pixels_and_a_bad_budget(client):
    pixels = triton.InferInput("input", [1, 3, 8, 8], "FP32")
    pixels.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
    for inputs, parameters, message in (
        ([pixels], None, "takes only the 'image' input"),
        ([images(png(CLEAR[0]))], {"budget_ms": -1}, "'budget_ms' must be a positive number"),
    ):
        with pytest.raises(InferenceServerException) as caught:
            client.infer("auto", inputs, parameters=parameters)
        assert caught.value.status() == "400" and message in caught.value.message()
