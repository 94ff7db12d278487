"""deploy/docker/healthcheck.py, the images' HEALTHCHECK, run as Docker runs it: a separate process
probing a real HTTP server on the port in RESNET_SERVE_PORT."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "healthcheck.py"


def probe(port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESNET_SERVE_PORT": str(port)}
    return subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)


@pytest.fixture
def server():
    """A local server answering GET /health/live with the status set on it (404 elsewhere)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        status = 200

        def do_GET(self):
            code = Handler.status if self.path == "/health/live" else 404
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, Handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_healthy_when_live_answers_200(server):
    httpd, _ = server
    result = probe(httpd.server_address[1])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_unhealthy_when_live_answers_an_error_status(server):
    httpd, handler = server
    handler.status = 503
    result = probe(httpd.server_address[1])
    assert result.returncode == 1
    assert "answered 503, expected 200" in result.stderr


def test_unhealthy_when_nothing_listens():
    with socket.socket() as sock:  # a port that was free a moment ago and now has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = probe(port)
    assert result.returncode == 1
    assert result.stderr.startswith("unhealthy: http://127.0.0.1:")
