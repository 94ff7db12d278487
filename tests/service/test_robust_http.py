"""Hostile HTTP beyond hostile images, against the shared real server: each gets a 4xx
or a closed connection, never a 5xx or a stuck worker, and the server serves normally after."""

from __future__ import annotations

import json

import httpx

from .conftest import encode, photo
from .test_abuse import connect, head, read_until_closed, status_of


def exchange(url: str, data: bytes) -> bytes:
    """Send raw bytes, then everything the server answers until it closes the connection."""
    with connect(url, timeout=60) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def jpeg() -> bytes:
    return encode(photo("color.png").convert("RGB"), quality=90)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary", close: bool = True) -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "Content-Type: image/jpeg\r\n" if filename else ""
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode() + data + b"\r\n"
    return body + (f"--{boundary}--\r\n".encode() if close else b"")


def test_thousands_of_form_fields_say_too_many_parts_not_too_many_images(server):
    body = multipart([(f"field{i}", None, b"x") for i in range(5000)] + [("images", "a.jpg", jpeg())])
    response = httpx.post(
        server.url + "/classify", content=body, headers={"Content-Type": "multipart/form-data; boundary=b0undary"}
    )
    error = response.json()["error"]
    assert response.status_code == 413 and error["max_parts"] == 48
    assert error["message"] == "a multipart upload holds at most 48 parts: up to 32 images and 16 other form fields"


def test_a_multipart_body_whose_boundary_never_closes_is_a_400(server):
    body = multipart([("images", "a.jpg", jpeg())], close=False)
    response = httpx.post(
        server.url + "/classify", content=body, headers={"Content-Type": "multipart/form-data; boundary=b0undary"}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_image"


def test_oversized_or_numerous_headers_are_refused_and_closed(server):
    huge = b"GET /health/live HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    many = b"GET /health/live HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"\r\n"
    for data in (huge, many):  # 400 from h11 when the head comes in pieces, 431 from us when whole
        answer = exchange(server.url, data)
        assert status_of(answer) in (400, 431) and b"connection: close" in answer.lower()


def test_a_body_longer_than_its_content_length_is_cut_at_the_length(server):
    # The first request is answered from exactly Content-Length bytes; the rest is read as the next
    # request, which is not HTTP: at most a 400, and the connection closes. No 5xx, nothing stuck.
    data = jpeg()
    answer = exchange(server.url, head("/classify", len(data)) + data + b"\x00garbage" * 1000)
    statuses = [int(line.split(b" ")[1]) for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert statuses in ([200], [200, 400])


def test_a_request_id_with_control_characters_is_never_echoed(server):
    for supplied in (b"abc\x01\x1bdef", b"a b\tc", b"x" * 129):
        answer = exchange(server.url, b"GET /health/live HTTP/1.1\r\nHost: t\r\nX-Request-ID: " + supplied
                          + b"\r\nConnection: close\r\n\r\n")  # fmt: skip
        ids = [line[14:] for line in answer.split(b"\r\n") if line.lower().startswith(b"x-request-id: ")]
        assert status_of(answer) == 200 and len(ids) == 1 and len(ids[0]) == 32 and supplied not in answer


def test_deep_or_huge_json_is_refused_at_its_first_wrong_token(server):
    # /classify takes JSON bodies (service/api/uploads.py): the parser stops where the shape goes wrong,
    # so deep nesting or a huge unknown member costs one token, not a walk of the document.
    deep = "[" * 100_000 + "]" * 100_000
    deep_inside = '{"images": ' + "[" * 100_000 + "]" * 100_000 + "}"
    huge = json.dumps({"inputs": [0.5] * 300_000})
    for body, why in ((deep, "got `array`"), (deep_inside, "got `array` - at `$.images[0]`"), (huge, "`inputs`")):
        response = httpx.post(server.url + "/classify", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]["code"] == "bad_json"
        assert why in response.json()["error"]["message"]
    # A body that announces more than any JSON upload may hold is refused before it is read.
    head = b"POST /classify HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 30000000\r\n\r\n"
    answer = exchange(server.url, head + b"[" * 1000)  # the rest never comes: answered and closed at once
    assert status_of(answer) == 413 and b"connection: close" in answer.lower() and b"JSON body" in answer


def test_405_names_the_allowed_methods(server):
    response = httpx.get(server.url + "/classify")
    assert response.status_code == 405 and "POST" in response.headers["allow"]
    assert httpx.get(server.url + "/health/ready").status_code == 200  # and the server is still well
