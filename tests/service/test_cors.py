"""CORS: a page on another origin may call the API from a browser when --cors-origins names its origin,
and is refused when it does not. A real headless Chromium runs `fetch()` from a page served by a
second, tiny HTTP server on another port; httpx checks the preflight answers header by header."""

from __future__ import annotations

import base64
import http.server
import threading

import httpx
import pytest
from litestar.testing import TestClient

from bench import photos
from service.api.app import create_app
from service.config import ServeConfig
from service.engine.runtime import load_models

from .conftest import free_port, start_server

PHOTO = photos.path("color.png")
# Runs in the other origin's page: POST the image to the service, report what the page could read.
FETCH = """
const [url, contentType, b64, done] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const body = contentType === "application/json" ? JSON.stringify({image: b64}) : bytes;
fetch(url, {method: "POST", headers: {"Content-Type": contentType}, body})
  .then(async (r) => done({status: r.status, body: await r.json(), request_id: r.headers.get("X-Request-ID")}))
  .catch((error) => done({refused: String(error)}));
"""


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>another origin</title><p>a web developer's page</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet: pytest shows stderr of failing tests only
        pass


@pytest.fixture(scope="module")
def origin():
    """A second tiny HTTP server on another port: another origin, whose page calls the service."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def cors_server(models_dir, tmp_path_factory, origin):
    """resnet-serve with --cors-origins naming `origin` (and one more, to show the list works)."""
    server = start_server(
        models_dir, tmp_path_factory.mktemp("cors"), "--providers", "cpu",
        "--cors-origins", f"https://app.example.com,{origin}",
    )  # fmt: skip
    yield server
    server.stop()


def fetch_from(browser, origin: str, service_url: str, content_type: str, data: bytes) -> dict:
    if not browser.current_url.startswith(origin):
        browser.get(origin + "/")
    return browser.execute_async_script(FETCH, service_url + "/classify", content_type, base64.b64encode(data).decode())


def test_a_page_on_an_allowed_origin_reads_answers_and_errors(browser, origin, cors_server):
    data = PHOTO.read_bytes()
    expected = httpx.post(cors_server.url + "/classify", content=data, headers={"Content-Type": "image/png"}).json()
    for content_type in ("image/png", "application/json"):  # both need a preflight: neither type is safelisted
        result = fetch_from(browser, origin, cors_server.url, content_type, data)
        assert result.get("status") == 200, result
        assert result["body"] == expected and len(result["request_id"]) == 32  # X-Request-ID is exposed
    refused = fetch_from(browser, origin, cors_server.url, "text/plain", data)  # the service's error, readable
    assert refused.get("status") == 415 and refused["body"]["error"]["code"] == "unsupported_media_type", refused


def test_a_page_on_an_origin_not_allowed_is_refused_by_the_browser(browser, origin, server):
    data = PHOTO.read_bytes()
    result = fetch_from(browser, origin, server.url, "image/png", data)  # CORS off: the default
    assert result.get("refused", "").startswith("TypeError: Failed to fetch"), result
    # The service is up and answers the same request from a client that is not a browser.
    assert httpx.post(server.url + "/classify", content=data, headers={"Content-Type": "image/png"}).status_code == 200


def test_preflights_answer_for_the_listed_origins_only(origin, cors_server):
    def preflight(who: str, method: str = "POST", headers: str = "content-type, authorization"):
        return httpx.options(cors_server.url + "/classify", headers={
            "Origin": who, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers,
        })  # fmt: skip

    allowed = preflight(origin)
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == origin and "Origin" in allowed.headers["vary"]
    assert set(allowed.headers["access-control-allow-methods"].split(", ")) == {"GET", "POST"}
    assert {"content-type", "authorization"} <= set(allowed.headers["access-control-allow-headers"].split(", "))
    assert int(allowed.headers["access-control-max-age"]) > 0
    assert preflight("https://app.example.com").headers["access-control-allow-origin"] == "https://app.example.com"
    for refused, why in (
        (preflight("http://evil.example"), "Origin"),
        (preflight(origin, method="DELETE"), "method"),
        (preflight(origin, headers="x-unlisted"), "headers"),
    ):
        assert refused.status_code == 400 and why in refused.text
        assert refused.headers.get("access-control-allow-origin") != origin
    # A simple request: the answer names the allowed origin, exposes the request id, and names no other.
    simple = httpx.get(cors_server.url + "/models", headers={"Origin": origin})
    assert simple.headers["access-control-allow-origin"] == origin
    assert "X-Request-ID" in simple.headers["access-control-expose-headers"]
    other = httpx.get(cors_server.url + "/models", headers={"Origin": "http://evil.example"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def test_cors_is_off_by_default_and_star_allows_every_origin(models_dir, server):
    asks = {"Origin": "http://a.example", "Access-Control-Request-Method": "POST"}
    off = httpx.options(server.url + "/classify", headers=asks)
    assert not any(name.startswith("access-control-") for name in off.headers), dict(off.headers)
    config = ServeConfig(
        models=models_dir, providers=("cpu",), intra_op_threads=1, decode_threads=1, cors_origins=("*",)
    )
    with TestClient(create_app(config, load_models(config))) as client:
        answer = client.options("/classify", headers=asks)
        assert answer.status_code == 204 and answer.headers["access-control-allow-origin"] == "*"
