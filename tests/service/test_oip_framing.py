"""Hand-made Open Inference Protocol requests for the mistakes tritonclient cannot make: malformed
JSON and binary framing, a body over the limit, compression, wrong methods. Each answers a 4xx whose
body is exactly {"error": "<message>"}; the existing routes keep their own error shape."""

from __future__ import annotations

import json
import struct
import threading
import time

import httpx
import pytest

from tests.service.conftest import start_server, variants
from tests.service.test_operations import slow_png, wait_for_queue_depth

INFER = "/v2/models/resnet18/infer"


def framed(header: dict, *chunks: bytes, length: int | None = None) -> tuple[bytes, dict]:
    """A binary-extension body: the JSON header, then the chunks; the header length (or `length`)."""
    encoded = json.dumps(header).encode()
    return encoded + b"".join(chunks), {"Inference-Header-Content-Length": str(len(encoded) if length is None else length)}


def image_header(size: int, shape=(1,)) -> dict:
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": list(shape), "parameters": {"binary_data_size": size}}]}


def element(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def post(url: str, body: bytes, headers: dict | None = None, path: str = INFER) -> httpx.Response:
    return httpx.post(url + path, content=body, headers=headers or {}, timeout=30)


def assert_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    assert fragment in body["error"], body["error"]


def test_a_hand_made_binary_request_works(server):
    image = element(variants(1)[0])
    body, headers = framed({**image_header(len(image)), "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]}, image)
    response = post(server.url, body, headers)
    assert response.status_code == 200, response.text
    answer = response.json()  # no output asked binary: the whole body is JSON
    assert "inference-header-content-length" not in response.headers
    assert answer["outputs"][0]["datatype"] == "BYTES" and answer["outputs"][0]["shape"] == [1, 2]


def test_framing_errors_are_400_with_the_protocols_error_shape(server):
    image = element(variants(1)[0])
    header = image_header(len(image))
    good, headers = framed(header, image)
    cases = {
        "not JSON": (b"{inputs: nope", {}, "not valid JSON"),
        "JSON but not an object": (b"[1, 2]", {}, "must be a JSON object"),
        "no inputs": (b'{"inputs": []}', {}, "'inputs' is empty"),
        "header length not a number": (good, {"Inference-Header-Content-Length": "twelve"}, "must be an integer"),
        "header length past the body": (good, {"Inference-Header-Content-Length": str(len(good) + 1)}, "but the body has"),
        "header length cuts the JSON": (good, {"Inference-Header-Content-Length": "10"}, "not valid JSON"),
        "binary data without a header length": (good, {}, "not valid JSON"),
        "binary data left over": (*framed(header, image, b"extra"), "add up to"),
        "binary_data_size past the data": (*framed(image_header(len(image) + 10), image), "runs past"),
        "BYTES length cut off": (*framed(image_header(len(image) + 2), image, b"\x01\x00"), "cut off inside its 4-byte length"),
        "BYTES element longer than the data": (*framed(image_header(8), struct.pack("<I", 100) + b"abcd"), "announces 100 bytes"),
        "shape disagrees with BYTES count": (*framed(image_header(len(image), shape=(2,)), image), "shape holds 2 elements"),
        "neither data nor binary": (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}', {}, "neither"),
        "JSON BYTES not base64": (
            b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]}', {}, "not valid base64"
        ),
        "unknown datatype": (b'{"inputs": [{"name": "image", "datatype": "JPEG", "shape": [1], "data": [""]}]}', {}, "unknown datatype"),
        "negative shape": (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1], "data": [""]}]}', {}, "non-negative"),
        "two inputs": (
            b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [0], "data": []},'
            b' {"name": "input", "datatype": "FP32", "shape": [0], "data": []}]}', {}, "exactly one input"
        ),
        "empty batch": (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [0], "data": []}]}', {}, "at least 1"),
        "FP32 data of the wrong length": (
            b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [1, 2]}]}', {}, "'data' has 2"
        ),
        "binary_data not a boolean": (
            *framed({**header, "outputs": [{"name": "probabilities", "parameters": {"binary_data": "yes"}}]}, image), "must be a boolean"
        ),
    }  # fmt: skip
    for case, (body, headers, fragment) in cases.items():
        try:
            assert_error(post(server.url, body, headers), 400, fragment)
        except AssertionError as error:
            raise AssertionError(f"{case}: {error}") from None


def test_route_level_errors_take_the_protocols_shape_and_the_old_routes_keep_theirs(server):
    assert_error(httpx.get(server.url + INFER), 405, "not allowed")
    assert_error(httpx.get(server.url + "/v2/models/resnet18/nothing"), 404, "no route")
    assert_error(httpx.get(server.url + "/v2/models/resnet99"), 404, "unknown model 'resnet99'")
    assert_error(post(server.url, b"{}", {"Content-Encoding": "gzip"}), 415, "Content-Encoding 'gzip'")
    old = httpx.post(server.url + "/classify?model=resnet99", content=b"x", headers={"Content-Type": "image/jpeg"})
    assert old.status_code == 404 and old.json()["error"]["code"] == "unknown_model"


def test_a_body_over_the_limit_is_413(models_dir, tmp_path):
    server = start_server(models_dir, tmp_path, "--providers", "cpu", "--max-body-bytes", "100000")
    try:
        big = element(bytes(150_000))
        body, headers = framed(image_header(len(big)), big)
        assert_error(post(server.url, body, headers), 413, "over the limit of 100000 bytes")

        def chunks():  # no Content-Length: the limit holds on the bytes as they stream in
            for start in range(0, len(body), 16_384):
                yield body[start : start + 16_384]

        assert_error(post(server.url, chunks(), headers), 413, "over the limit")
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["/v2/health/ready", "/v2/models/resnet18/ready", "/v2/models/resnet18/versions/1/ready"])
def test_readiness_routes_answer_200_when_warm(server, path):
    assert httpx.get(server.url + path).status_code == 200


def test_503_with_retry_after_while_warming_up_and_when_the_queue_is_full(models_dir, tmp_path):
    # Enough warm-up runs that the port opens well before the models are warm (as test_operations).
    server = start_server(
        models_dir, tmp_path, "--providers", "cpu", "--warmup-runs", "150", "--queue-size", "2", "--max-images", "2",
        "--decode-threads", "1", wait_ready=False,
    )  # fmt: skip
    try:
        for path in ("/v2/health/ready", "/v2/models/resnet18/ready"):
            early = httpx.get(server.url + path)
            assert early.status_code == 503 and early.headers["retry-after"] == "1", path
        image = element(variants(1)[0])
        assert_error(post(server.url, *framed(image_header(len(image)), image)), 503, "warming up")
        deadline = time.monotonic() + 60
        while httpx.get(server.url + "/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.05)
        # Two slow decodes, one at a time, fill the queue of 2 for most of a second.
        slow = [element(slow_png((i, 0, 0))) for i in (1, 2)]
        waiting = [threading.Thread(target=post, args=(server.url, *framed(image_header(len(s)), s))) for s in slow]
        for thread in waiting:
            thread.start()
        wait_for_queue_depth(server.url, 2)
        full = post(server.url, *framed(image_header(len(image)), image))
        for thread in waiting:
            thread.join()
    finally:
        server.stop()
    assert_error(full, 503, "at capacity")
    assert int(full.headers["retry-after"]) >= 1
