"""The load generator's Open Inference Protocol mode (bench/load.py --protocol oip, bench/oip.py):
its framed requests are answered 200 by a real resnet-serve, as tritonclient's would be."""

from __future__ import annotations

import asyncio

import httpx

from bench import load, oip
from tests.service.conftest import start_server, variants


def test_framed_requests_are_answered_and_counted(tiny_models_dir, tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(variants(1)[0])
    body, length = oip.frame(image.read_bytes())
    server = start_server(tiny_models_dir, tmp_path, "--providers", "cpu")
    try:
        answer = httpx.post(server.url + oip.path("resnet18"), content=body,
                            headers={oip.HEADER_LENGTH: str(length)}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers[oip.HEADER_LENGTH]  # the top 5 came back as binary classification strings
        config = load.LoadConfig(server.url, oip.path("resnet18"), (image,), concurrency=2, warmup_s=0.2,
                                 duration_s=1.0, protocol="oip")
        result = asyncio.run(load.run(config))
    finally:
        server.stop()
    assert result.requests > 0 and result.errors == {}
