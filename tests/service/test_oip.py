"""The Open Inference Protocol v2 routes (service/api/oip.py) driven by Triton's own HTTP client, as a
user would: health, metadata, images in with classification or probabilities out, binary and JSON,
pixels in, agreement with /classify on the same photos, concurrent async_infer calls, and the errors
the client can provoke. Framing errors the client cannot produce: tests/service/test_oip_framing.py.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from artifact import preprocess
from tests.service.conftest import variants

MAX_PIXELS = 50_000_000
ORT_DATATYPES = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(uint8)": "UINT8"}


@pytest.fixture(scope="module")
def client(server):
    client = triton.InferenceServerClient(server.url.removeprefix("http://"), concurrency=8)
    yield client
    client.close()


def images_input(files: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(files)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(files, dtype=np.object_))
    else:  # JSON carries an image as base64 (KServe's convention), which the client does not do for us
        import base64

        tensor.set_data_from_numpy(np.array([base64.b64encode(f) for f in files], dtype=np.object_), binary_data=False)
    return tensor


def expected(references, name: str, files: list[bytes]) -> np.ndarray:
    ref = references[name]
    return np.stack([ref.probabilities(preprocess.prepare(f, ref.card.preprocessing, MAX_PIXELS)) for f in files])


def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "resnet-serve"
    assert {"binary_tensor_data", "classification"} <= set(metadata["extensions"])


def test_model_metadata_describes_the_session_input_and_works_with_every_listed_version(client, references):
    for name, ref in references.items():
        (node,) = [n for n in ref.session.get_inputs() if n.name == ref.card.input_name]
        pixels = (ORT_DATATYPES[node.type], list(ref.card.preprocessing.input_shape(-1)))
        for version in ["", *client.get_model_metadata(name)["versions"]]:
            metadata = client.get_model_metadata(name, version)
            assert metadata["name"] == name and metadata["versions"] == ["1"]
            inputs = {i["name"]: (i["datatype"], i["shape"]) for i in metadata["inputs"]}
            assert inputs == {"image": ("BYTES", [-1]), node.name: pixels}  # as the session says
            card = ref.card
            assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
                ("probabilities", "FP32", [-1, card.num_classes]),  # then what the graph explains with
                ("embedding", "FP32", [-1, card.embedding_size]),
                ("cam", "FP32", [-1, -1, *card.cam_size]),  # k maps: the caller may choose k
                ("cam_classes", "INT64", [-1, -1]),
            ]
            assert client.is_model_ready(name, version)


def test_images_in_classification_out_agrees_with_classify(client, server):
    files = variants(3)
    answer = client.infer(
        "resnet18", [images_input(files)], outputs=[triton.InferRequestedOutput("probabilities", class_count=3)]
    )
    top = answer.as_numpy("probabilities")
    assert top.shape == (3, 3)
    multipart = [("file", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(files)]
    classified = httpx.post(f"{server.url}/classify?model=resnet18&top_k=3", files=multipart, timeout=30).json()
    for row, result in zip(top, classified["results"]):
        parsed = [element.decode().split(":", 2) for element in row]
        assert [(int(i), label) for _, i, label in parsed] == [
            (p["class_index"], p["label"]) for p in result["predictions"]
        ]
        assert np.allclose([float(v) for v, _, _ in parsed], [p["probability"] for p in result["predictions"]], atol=1e-6)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_images_in_probabilities_out(client, references, binary):
    files = variants(2)
    answer = client.infer(
        "resnet20",
        [images_input(files, binary)],
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary)],
    )
    output = answer.get_output("probabilities")
    assert ("binary_data_size" in output.get("parameters", {})) == binary
    assert answer.get_response()["model_name"] == "resnet20" and answer.get_response()["model_version"] == "1"
    assert np.allclose(answer.as_numpy("probabilities"), expected(references, "resnet20", files), atol=1e-5)


def test_no_outputs_named_answers_every_output_in_binary(client, references):
    files = variants(1)
    answer = client.infer("resnet18", [images_input(files)])  # the client then asks binary_data_output
    assert "binary_data_size" in answer.get_output("probabilities")["parameters"]
    assert np.allclose(answer.as_numpy("probabilities"), expected(references, "resnet18", files), atol=1e-5)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_pixels_in_give_the_answer_of_the_same_image(client, references, binary):
    files = variants(2)
    ref = references["resnet18"]
    pixels = np.stack([preprocess.prepare(f, ref.card.preprocessing, MAX_PIXELS) for f in files])
    tensor = triton.InferInput(ref.card.input_name, list(pixels.shape), np_to_triton_dtype(pixels.dtype))
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    answer = client.infer("resnet18", [tensor], outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary)])
    assert np.allclose(answer.as_numpy("probabilities"), expected(references, "resnet18", files), atol=1e-5)


def test_concurrent_async_infer_calls_each_get_their_own_answer_and_id(client, references):
    files = variants(8)
    pending = [
        client.async_infer(
            "resnet18",
            [images_input([data])],
            request_id=f"req-{i}",
            outputs=[triton.InferRequestedOutput("probabilities", class_count=1)],
        )
        for i, data in enumerate(files)
    ]
    truth = expected(references, "resnet18", files).argmax(axis=1)
    for i, call in enumerate(pending):
        answer = call.get_result(timeout=60)
        assert answer.get_response()["id"] == f"req-{i}"
        assert int(answer.as_numpy("probabilities")[0, 0].decode().split(":")[1]) == truth[i]


def refused(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_client_side_mistakes_are_4xx_with_a_message(client, references):
    files = variants(1)
    ref = references["resnet18"]
    probabilities = [triton.InferRequestedOutput("probabilities")]
    cases = {
        "unknown model": (lambda: client.infer("resnet99", [images_input(files)]), "404", "unknown model 'resnet99'"),
        "unknown version": (
            lambda: client.infer("resnet18", [images_input(files)], model_version="7"),
            "404",
            "has no version '7'",
        ),
        "bad image": (lambda: client.infer("resnet18", [images_input([files[0], b"not an image"])]), "400", "cannot identify"),
        "unknown output": (
            lambda: client.infer("resnet18", [images_input(files)], outputs=[triton.InferRequestedOutput("logits")]),
            "400",
            "unknown output 'logits'",
        ),
        "too many classes": (
            lambda: client.infer(
                "resnet18", [images_input(files)], outputs=[triton.InferRequestedOutput("probabilities", class_count=99)]
            ),
            "400",
            "more than the 10 classes",
        ),
    }
    prep = ref.card.preprocessing
    pixels = preprocess.prepare(files[0], prep, MAX_PIXELS)[None]  # the model's own input, one image
    datatype = np_to_triton_dtype(pixels.dtype)
    wrong_type = triton.InferInput(ref.card.input_name, list(pixels.shape), "FP64")
    wrong_type.set_data_from_numpy(pixels.astype(np.float64))
    cases["wrong datatype"] = (
        lambda: client.infer("resnet18", [wrong_type], outputs=probabilities), "400", f"must be {datatype}"
    )
    wrong_shape = triton.InferInput(ref.card.input_name, [1, *pixels.shape[1:-1], 1], datatype)
    wrong_shape.set_data_from_numpy(pixels[..., :1])
    cases["wrong shape"] = (
        lambda: client.infer("resnet18", [wrong_shape]), "400", f"must have shape {list(prep.input_shape(-1))}"
    )
    unknown = triton.InferInput("pixels", [1], "FP32")
    unknown.set_data_from_numpy(np.zeros(1, np.float32))
    cases["unknown input"] = (lambda: client.infer("resnet18", [unknown]), "400", "unknown input 'pixels'")
    images_as_floats = triton.InferInput("image", [1], "FP32")
    images_as_floats.set_data_from_numpy(np.zeros(1, np.float32))
    cases["image as FP32"] = (lambda: client.infer("resnet18", [images_as_floats]), "400", "must be BYTES")
    cases["too many images"] = (lambda: client.infer("resnet18", [images_input(files * 33)]), "413", "at most 32")
    for case, (call, status, message) in cases.items():
        error = refused(call)
        assert error.status() == status, (case, error)
        assert message in error.message(), (case, error.message())
    assert not client.is_model_ready("resnet99") and not client.is_model_ready("resnet18", "2")
