"""Per-caller limits through a real resnet-serve process: a burst over the limit gets 429 with
Retry-After before its body is read, the caller is served again after waiting that long, and one
caller's limit is not another's (per key with keys, per client address without)."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from .conftest import encode, photo, start_server

ALICE = "alice-0123456789abcdef0123456789abcdef"
BOB = "bob-fedcba9876543210fedcba9876543210"
RATE, BURST = "0.5", "3"  # slow enough that a burst from a busy test box still runs past it


@pytest.fixture(scope="module")
def limited(models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("limited")
    (root / "keys").write_text(f"alice {ALICE}\nbob {BOB}\n")
    (root / "keys").chmod(0o600)
    server = start_server(models_dir, root, "--api-keys-file", str(root / "keys"), "--providers", "cpu",
                          "--rate-limit-rps", RATE, "--rate-limit-burst", BURST)  # fmt: skip
    yield server
    server.stop()


def burst(client: httpx.Client, count: int, **headers) -> list[httpx.Response]:
    return [client.get("/models", headers=headers) for _ in range(count)]


def test_a_burst_over_the_limit_gets_429_with_retry_after_and_is_served_again_after_it(limited):
    image = encode(photo("coffee.png").convert("RGB"))
    alice = {"Authorization": f"Bearer {ALICE}"}
    with httpx.Client(base_url=limited.url, timeout=30) as client:
        responses = burst(client, 8, **alice)
        codes = [r.status_code for r in responses]
        assert codes[: int(BURST)] == [200] * int(BURST) and 429 in codes, codes
        refused = next(r for r in responses if r.status_code == 429)
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 2  # one token at 0.5 per second
        error = refused.json()["error"]
        assert error["code"] == "rate_limited" and error["retry_after_s"] == retry_after
        # Refused from the headers: an upload is answered without its body being read.
        upload = client.post("/classify", content=image, headers={**alice, "Content-Type": "image/jpeg"})
        if upload.status_code == 429:  # unless a token came back meanwhile on a slow box
            assert upload.headers["Connection"] == "close"
        # Another key has its own bucket.
        assert client.get("/models", headers={"Authorization": f"Bearer {BOB}"}).status_code == 200
        while (refused := client.get("/models", headers=alice)).status_code != 429:
            pass  # spend what came back meanwhile, so the next answer depends on the wait alone
        time.sleep(int(refused.headers["Retry-After"]))
        assert client.get("/models", headers=alice).status_code == 200
        metrics = client.get("/metrics").text
    assert re.search(r'^resnet_api_requests_total\{key="alice",outcome="rate_limited"\} [1-9]', metrics, re.M)
    assert re.search(r'^resnet_api_requests_total\{key="alice",outcome="admitted"\} [4-9]', metrics, re.M)


def test_health_and_metrics_are_not_limited(limited):
    with httpx.Client(base_url=limited.url, timeout=30) as client:
        assert {client.get(path).status_code for path in ["/health/ready", "/metrics"] * 5} == {200}


def test_without_keys_each_client_address_has_its_own_limit(models_dir, tmp_path):
    server = start_server(models_dir, tmp_path, "--providers", "cpu", "--rate-limit-rps", RATE,
                          "--rate-limit-burst", BURST)  # fmt: skip
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            codes = [r.status_code for r in burst(client, 8)]
        assert codes[: int(BURST)] == [200] * int(BURST) and 429 in codes, codes
        # Another loopback source address is another client: served while 127.0.0.1 is refused.
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(base_url=server.url, timeout=30, transport=transport) as other:
            assert other.get("/models").status_code == 200
    finally:
        server.stop()
