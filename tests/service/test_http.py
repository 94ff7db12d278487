"""The HTTP API: answers and shapes end to end through a real resnet-serve process; the 4xx paths
through the same app in-process (Litestar's TestClient)."""

from __future__ import annotations

import time

import httpx
import pytest

from litestar.testing import TestClient

from service.api.app import create_app
from service.config import ServeConfig
from artifact.preprocess import prepare
from service.engine.runtime import load_models

from .conftest import assert_answers, encode, photo, png_claiming, variants

LIMIT = 50_000_000  # the default max_pixels


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return encode(photo("motorcycle_right.png").convert("RGB"), quality=90)


def expected(references, name: str, data: bytes):
    ref = references[name]
    return ref.probabilities(prepare(data, ref.card.preprocessing, LIMIT))


def post_image(url: str, data: bytes, content_type: str = "image/jpeg", **params) -> httpx.Response:
    return httpx.post(url, content=data, headers={"Content-Type": content_type}, params=params, timeout=30)


@pytest.fixture(scope="module")
def client(models_dir):
    """The app in this process through Litestar's TestClient, lifespan and warm-up included: the 4xx
    answers need no real server process (those stay for lifecycle, signals and load)."""
    config = ServeConfig(models=models_dir, providers=("cpu",), intra_op_threads=1, decode_threads=1)
    with TestClient(create_app(config, load_models(config))) as client:
        deadline = time.monotonic() + 60
        while client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the in-process app never became ready"
            time.sleep(0.02)
        yield client


def post_to(client: TestClient, path: str, data: bytes, content_type: str = "image/jpeg", **params) -> httpx.Response:
    return client.post(path, content=data, headers={"Content-Type": content_type}, params=params)


def test_one_raw_image_answers_its_top_k(server, references, jpeg):
    response = post_image(server.url + "/classify", jpeg, top_k=3)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert len(response.headers["x-request-id"]) == 32
    body = response.json()
    assert list(body) == ["model", "predictions"] and body["model"] == "resnet18"
    assert_answers(body["predictions"], expected(references, "resnet18", jpeg), references["resnet18"].card, 3)


def test_the_model_is_chosen_by_query_or_path_and_top_k_defaults_to_five(server, references, jpeg):
    for name, ref in references.items():
        for response in (
            post_image(server.url + "/classify", jpeg, model=name),
            post_image(f"{server.url}/models/{name}/classify", jpeg),
        ):
            assert response.status_code == 200, response.text
            assert response.json()["model"] == name
            assert_answers(
                response.json()["predictions"], expected(references, name, jpeg), ref.card, min(5, ref.card.num_classes)
            )


def test_several_files_answer_results_in_upload_order(server, references):
    images = variants(3) + [encode(photo("coins.png"), "PNG")]
    files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    response = httpx.post(server.url + "/classify", files=files, params={"top_k": 2}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["model", "results"] and len(body["results"]) == 4
    card = references["resnet18"].card
    for result, data in zip(body["results"], images):
        assert list(result) == ["predictions"]
        assert_answers(result["predictions"], expected(references, "resnet18", data), card, 2)


def test_one_file_in_a_multipart_upload_answers_like_a_raw_image(server, references, jpeg):
    files = {"image": ("photo.jpg", jpeg, "image/jpeg"), "note": (None, "form fields are ignored")}
    response = httpx.post(server.url + "/classify", files=files, params={"top_k": 1}, timeout=30)
    assert response.status_code == 200, response.text
    assert list(response.json()) == ["model", "predictions"]
    assert_answers(
        response.json()["predictions"], expected(references, "resnet18", jpeg), references["resnet18"].card, 1
    )


def test_models_are_described(server, references):
    body = httpx.get(server.url + "/models").json()
    assert body["default_model"] == "resnet18"
    assert [m["name"] for m in body["models"]] == sorted(references)
    for info in body["models"]:
        card = references[info["name"]].card
        assert list(info) == [
            "name", "arch", "depth", "num_classes", "input_size", "resize_size", "mean", "std", "interpolation",
            "precision", "providers", "source_sha256", "val_top1", "val_top5", "exported_at", "default", "abstain_threshold",
            "explains", "device_memory_bytes", "max_batch_size", "queue_size",
        ]  # fmt: skip
        assert (info["arch"], info["depth"], info["num_classes"]) == (card.arch, card.depth, card.num_classes)
        assert (info["input_size"], info["precision"], info["source_sha256"]) == (
            card.preprocessing.input_size, card.precision, card.source_sha256)  # fmt: skip
        assert (info["val_top1"], info["val_top5"]) == (card.val_top1, card.val_top5)
        assert info["providers"] and info["default"] == (info["name"] == "resnet18")
        assert info["device_memory_bytes"] is None  # a GPU figure: null on the CPU provider
        assert (info["max_batch_size"], info["queue_size"]) == (8, 128)  # the CPU's defaults
    detail = httpx.get(server.url + "/models/resnet18").json()
    card = references["resnet18"].card
    assert detail["classes"][0] == {"class_index": 0, "class_id": card.class_ids[0], "label": card.class_names[0]}
    assert len(detail["classes"]) == card.num_classes


def test_health_metrics_and_openapi(server):
    assert httpx.get(server.url + "/health/live").json()["status"] == "live"
    ready = httpx.get(server.url + "/health/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "models": {"resnet18": True, **{
        name: True for name in ready.json()["models"]}}}  # fmt: skip
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    for name in ("resnet_requests_total", "resnet_queue_wait_seconds_bucket", "resnet_preprocess_seconds_sum",
                 "resnet_inference_seconds_count", "resnet_batch_size_bucket", "resnet_queue_depth"):  # fmt: skip
        assert f"\n{name}{{" in metrics.text, name
    paths = httpx.get(server.url + "/schema/openapi.json").json()["paths"]
    assert {"/classify", "/models/{name}/classify", "/models", "/health/ready", "/metrics"} <= set(paths)


def error_of(response: httpx.Response, status: int, code: str) -> dict:
    """The one error shape: {"error": {status, code, message, request_id, ...}}, with the status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert list(response.json()) == ["error"] and list(error)[:4] == ["status", "code", "message", "request_id"]
    assert (
        error["status"] == status and error["code"] == code and error["request_id"] == response.headers["x-request-id"]
    )
    return error


def test_a_client_request_id_is_echoed(server, jpeg):
    response = httpx.post(
        server.url + "/classify?model=nope",
        content=jpeg,
        headers={"Content-Type": "image/jpeg", "X-Request-ID": "trace-42"},
    )
    assert error_of(response, 404, "unknown_model")["request_id"] == "trace-42"
    deadline = time.monotonic() + 10  # the access line is written just after the response is sent
    while '"request_id": "trace-42"' not in server.log():
        assert time.monotonic() < deadline, "the request id never reached the access log"
        time.sleep(0.02)


def test_400_for_undecodable_or_corrupt_images(client, jpeg):
    assert (
        "cannot identify the image"
        in error_of(post_to(client, "/classify", b"GIF89a broken"), 400, "bad_image")["message"]
    )
    assert (
        "truncated"
        in error_of(post_to(client, "/classify", jpeg[: len(jpeg) // 2]), 400, "bad_image")["message"]
    )
    assert "empty" in error_of(post_to(client, "/classify", b""), 400, "bad_image")["message"]
    files = [("a", ("a.jpg", jpeg, "image/jpeg")), ("b", ("b.jpg", b"\xff\xd8 nonsense", "image/jpeg"))]
    error = error_of(client.post("/classify", files=files), 400, "bad_image")
    assert error["message"].startswith("image 2 of 2:") and error["image"] == 1
    no_files = client.post("/classify", files={"note": (None, "no file here")})
    assert "holds no file" in error_of(no_files, 400, "bad_image")["message"]
    malformed = post_to(client, "/classify", b"--xyz\r\nbroken", "multipart/form-data; boundary=xyz")
    error_of(malformed, 400, "bad_image")


def test_404_lists_the_available_models(client, references, jpeg):
    for response in (post_to(client, "/classify", jpeg, model="resnet9000"),
                     post_to(client, "/models/resnet9000/classify", jpeg),
                     client.get("/models/resnet9000")):  # fmt: skip
        error = error_of(response, 404, "unknown_model")
        assert error["available"] == sorted(references) and "resnet9000" in error["message"]
    error_of(client.get("/no/such/route"), 404, "not_found")
    error_of(client.get("/classify"), 405, "method_not_allowed")


def test_413_for_a_pixel_bomb_and_too_many_files(client, jpeg):
    error = error_of(
        post_to(client, "/classify", png_claiming(10_000, 10_000), "image/png"), 413, "too_many_pixels"
    )
    assert "100000000 pixels" in error["message"] and error["max_pixels"] == LIMIT
    files = [("images", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(33)]  # the default max_images is 32
    assert error_of(client.post("/classify", files=files), 413, "too_many_images")["max_images"] == 32


def test_415_for_unsupported_media_types(client, jpeg):
    for content_type in ("text/plain", "image/svg+xml", "application/xml"):
        error = error_of(post_to(client, "/classify", jpeg, content_type), 415, "unsupported_media_type")
        assert content_type in error["message"] and "image/jpeg" in error["accepted"]
    error_of(client.post("/classify", content=jpeg), 415, "unsupported_media_type")  # no Content-Type
    files = {"doc": ("notes.txt", b"hello", "text/plain")}
    assert (
        "notes.txt"
        in error_of(client.post("/classify", files=files), 415, "unsupported_media_type")["message"]
    )


def test_422_for_bad_parameters(client, references, jpeg):
    n = references["resnet18"].card.num_classes
    before = client.get("/metrics").text
    for top_k in ("0", str(n + 1), "-3", "abc"):
        error = error_of(post_to(client, "/classify", jpeg, top_k=top_k), 422, "invalid_parameter")
        assert "top_k" in str(error)
    after = client.get("/metrics").text
    counted = 'resnet_requests_total{model="resnet18",status="422"} '
    assert float(after.split(counted)[1].split()[0]) - float((before.split(counted) + ["0"])[1].split()[0]) == 4
    assert post_to(client, "/classify", jpeg, top_k=n).status_code == 200


def test_bad_uploads_never_take_the_process_down(server, jpeg):
    # The 4xx answers themselves are checked in-process above; here a real process meets bad uploads.
    assert post_image(server.url + "/classify", b"GIF89a broken").status_code == 400
    assert post_image(server.url + "/classify", jpeg[: len(jpeg) // 2]).status_code == 400
    assert post_image(server.url + "/classify", png_claiming(10_000, 10_000), "image/png").status_code == 413
    assert post_image(server.url + "/classify", b"--xyz\r\nbroken", "multipart/form-data; boundary=xyz").status_code == 400
    assert server.process.poll() is None
    assert post_image(server.url + "/classify", jpeg).status_code == 200
    assert "Traceback" not in server.log()  # no unhandled error was logged along the way
