"""JSON bodies: {"images": [base64, ...]} or {"image": base64} answer exactly what the same images
answer as a raw body or a multipart upload, under the same limits, with 4xx that name what is wrong.
In-process (Litestar's TestClient); one real process checks that a body is refused before it is read."""

from __future__ import annotations

import base64
import socket
import time
from urllib.parse import urlsplit

import pytest
from litestar.testing import TestClient

from service.api import uploads
from service.api.app import create_app
from service.config import ServeConfig
from service.engine.runtime import load_models

from .conftest import encode, photo, start_server, variants

SMALL_BODY = 300_000  # max_body_bytes of the limits' app: a few of the photos' JPEGs fit, not many
SMALL_IMAGES = 3


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def app_client(models_dir, **settings):
    config = ServeConfig(models=models_dir, providers=("cpu",), intra_op_threads=1, decode_threads=1, **settings)
    client = TestClient(create_app(config, load_models(config)))
    client.__enter__()
    deadline = time.monotonic() + 60
    while client.get("/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "the in-process app never became ready"
        time.sleep(0.02)
    return client


@pytest.fixture(scope="module")
def client(models_dir):
    client = app_client(models_dir)
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def small(models_dir):
    """An app with small limits: max_body_bytes = SMALL_BODY, max_images = SMALL_IMAGES."""
    client = app_client(models_dir, max_body_bytes=SMALL_BODY, max_images=SMALL_IMAGES)
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return variants(3)


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["status"] == status and error["request_id"]
    return error


def post_json(client, body, path="/classify", **params):
    return client.post(path, json=body, params={k: v for k, v in params.items() if v is not None})


@pytest.mark.parametrize("model", ["resnet18", "resnet20", "auto"])
def test_one_image_answers_as_the_raw_body_does(client, jpegs, model):
    raw = client.post("/classify", content=jpegs[0], headers={"Content-Type": "image/jpeg"}, params={"model": model})
    assert raw.status_code == 200, raw.text
    data_url = "data:image/jpeg;base64," + b64(jpegs[0])
    for body in ({"image": b64(jpegs[0])}, {"images": [b64(jpegs[0])]}, {"image": data_url}):
        answer = post_json(client, body, model=model, top_k=3 if model != "auto" else None)
        assert answer.status_code == 200, answer.text
        expected = raw.json()
        if model != "auto":
            expected["predictions"] = expected["predictions"][:3]
        assert answer.json() == expected
    by_path = post_json(client, {"image": b64(jpegs[0])}, path=f"/models/{model}/classify")
    assert by_path.json() == raw.json()


def test_several_images_answer_as_a_multipart_upload_does(client, jpegs):
    for model in ("resnet20", "auto"):
        files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(jpegs)]
        multipart = client.post("/classify", files=files, params={"model": model})
        answer = post_json(client, {"images": [b64(d) for d in jpegs]}, model=model)
        assert multipart.status_code == answer.status_code == 200, answer.text
        assert answer.json() == multipart.json() and len(answer.json()["results"]) == len(jpegs)


def test_a_malformed_body_is_400_bad_json_naming_what_is_wrong(client, jpegs):
    def sent(raw: bytes):
        return client.post("/classify", content=raw, headers={"Content-Type": "application/json"})

    assert "not valid JSON" in error_of(sent(b'{"images": ['), 400, "bad_json")["message"]
    assert "Expected `object`, got `array`" in error_of(sent(b"[]"), 400, "bad_json")["message"]
    assert "unknown field `imgs`" in error_of(sent(b'{"imgs": []}'), 400, "bad_json")["message"]
    assert "exactly one of the two keys" in error_of(sent(b"{}"), 400, "bad_json")["message"]
    both = post_json(client, {"image": b64(jpegs[0]), "images": [b64(jpegs[0])]})
    assert "exactly one of the two keys" in error_of(both, 400, "bad_json")["message"]
    assert "Expected a base64 `str`, got `int` - at `$.images[1]`" in error_of(
        post_json(client, {"images": [b64(jpegs[0]), 7]}), 400, "bad_json"
    )["message"]
    assert "list is empty" in error_of(post_json(client, {"images": []}), 400, "bad_json")["message"]
    for text, why in ((b64(jpegs[0])[:-1], "padding"), ("not base64!", "Only base64 data"), ("ünïcode", "ASCII")):
        message = error_of(post_json(client, {"images": [b64(jpegs[1]), text]}), 400, "bad_json")["message"]
        assert message.startswith("images[1] is not valid base64") and why in message
    plain_data_url = "data:image/jpeg," + b64(jpegs[0])
    assert ";base64," in error_of(post_json(client, {"image": plain_data_url}), 400, "bad_json")["message"]


def test_a_non_image_is_400_bad_image_as_in_any_other_body(client, jpegs):
    text = b64(b"just some text, not an image")
    assert "cannot identify the image" in error_of(post_json(client, {"image": text}), 400, "bad_image")["message"]
    error = error_of(post_json(client, {"images": [b64(jpegs[0]), text]}), 400, "bad_image")
    assert error["message"].startswith("image 2 of 2:")
    assert "empty" in error_of(post_json(client, {"image": ""}), 400, "bad_image")["message"]


def test_limits_count_decoded_bytes_and_images_as_for_the_other_bodies(small):
    big = encode(photo("motorcycle_right.png").convert("RGB"), quality=95)
    fits = [encode(photo(name).convert("RGB").resize((96, 96)), quality=80) for name in ("color.png", "coins.png")]
    assert len(big) < SMALL_BODY < 2 * len(big)
    # As a raw body one big photo fits; in JSON it is a third larger and still fits, two do not.
    assert small.post("/classify", content=big, headers={"Content-Type": "image/jpeg"}).status_code == 200
    assert post_json(small, {"image": b64(big)}).status_code == 200
    two = error_of(post_json(small, {"images": [b64(big), b64(big)]}), 413, "body_too_large")
    assert two["max_body_bytes"] == SMALL_BODY
    # Decoded, 100 bytes over the limit, while the JSON itself is still under its own (the images'
    # bytes are refused before any of them is decoded as an image).
    half = SMALL_BODY // 2 + 50
    over = error_of(post_json(small, {"images": [b64(bytes(half)), b64(bytes(half))]}), 413, "body_too_large")
    assert over["message"] == f"the decoded images are over the limit of {SMALL_BODY} bytes"
    # max_images: as many images as a multipart upload may hold, and no more
    assert post_json(small, {"images": [b64(fits[i % 2]) for i in range(SMALL_IMAGES)]}).status_code == 200
    many = post_json(small, {"images": [b64(fits[0])] * (SMALL_IMAGES + 1)})
    assert error_of(many, 413, "too_many_images")["max_images"] == SMALL_IMAGES


def test_the_json_limit_is_the_largest_upload_base64_encoded_plus_its_json():
    per_image, envelope = uploads.JSON_BYTES_PER_IMAGE, uploads.JSON_ENVELOPE_BYTES
    assert uploads.json_body_limit(3_000, 1, 10**9) == 4_000 + per_image + envelope
    assert uploads.json_body_limit(3_001, 2, 10**9) == 4_004 + 2 * per_image + envelope
    assert uploads.json_body_limit(3_000, 1, 4_500) == 4_500  # the read budget could never admit more


def test_an_oversized_json_body_is_refused_before_it_is_read(models_dir, tmp_path):
    server = start_server(models_dir, tmp_path, "--providers", "cpu", "--max-body-bytes", str(SMALL_BODY))
    try:
        limit = uploads.json_body_limit(SMALL_BODY, 32, 200_000_000)
        host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
        for announced, status in ((limit + 1, b" 413 "), (limit, None)):
            with socket.create_connection((host, port), timeout=10) as conn:
                head = (
                    f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {announced}\r\n\r\n"
                )
                conn.sendall(head.encode() + b'{"images": ["')  # the rest of the body never comes
                conn.settimeout(2.0)
                answer = b""
                try:
                    while chunk := conn.recv(4096):  # a refusal closes the connection after its answer
                        answer += chunk
                except TimeoutError:
                    pass  # still waiting for the body: it was admitted
            if status:
                assert status in answer.split(b"\r\n")[0] and b"the JSON body is over the limit" in answer, answer
            else:
                assert answer == b"", answer
    finally:
        server.stop()
