"""The pixels payload and --header, against a real resnet-serve on the tiny models: a photo sent as
the model's own input tensor gets the answer the photo file gets, and every request the bench sends
carries the extra headers (the service logs each request's X-Request-ID)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import httpx
import numpy as np
import pytest

from bench import oip, payloads
from service import config as serve_config
from service.engine.runtime import load_model
from tests.service.conftest import start_server


@pytest.fixture(scope="module")
def server(tiny_models_dir, tmp_path_factory):
    """resnet-serve on the tiny models, logging every request (with its id) at info."""
    running = start_server(tiny_models_dir, tmp_path_factory.mktemp("server"), "--providers", "cpu",
                           "--log-level", "info", "--intra-op-threads", "1")
    yield running
    running.stop()


def _top1_of_classification(response: httpx.Response) -> tuple[int, float]:
    """(index, probability) of the best of the binary classification strings an OIP answer carries."""
    length = int(response.headers[oip.HEADER_LENGTH])
    (size,) = struct.unpack_from("<I", response.content, length)
    value, index, _ = response.content[length + 4 : length + 4 + size].decode().split(":", 2)
    return int(index), float(value)


def test_pixels_get_the_answer_their_photo_gets(server, tiny_models_dir, tmp_path):
    photos = payloads.build(tmp_path, ("photo",))["photo"]
    serving = serve_config.parse(["--models", str(tiny_models_dir)], environ={})
    for name in ("resnet18", "resnet20"):
        model = load_model(tiny_models_dir / name / "model.onnx", serving)
        files = payloads.pixels(tmp_path, photos, name, model.card.preprocessing, model.input_dtype, serving.max_pixels)
        assert [f.name for f in files] == [f"pixels-{name}-{i}.npy" for i in range(len(photos))]
        for photo, pixels_file in zip(photos, files):
            pixels = np.load(pixels_file)
            assert pixels.shape == model.card.preprocessing.input_shape(1)[1:] and pixels.dtype == model.input_dtype
            by_file = httpx.post(f"{server.url}/classify?model={name}", content=photo.read_bytes(),
                                 headers={"Content-Type": "image/jpeg"}, timeout=30)
            body, length = oip.frame_pixels(pixels, model.card.input_name)
            by_pixels = httpx.post(server.url + oip.path(name), content=body, timeout=30,
                                   headers={oip.HEADER_LENGTH: str(length), "Content-Type": "application/octet-stream"})
            assert by_file.status_code == 200 and by_pixels.status_code == 200, by_pixels.text
            best = by_file.json()["predictions"][0]
            index, probability = _top1_of_classification(by_pixels)
            assert index == best["class_index"], (name, photo.name)
            assert probability == pytest.approx(best["probability"], abs=1e-6)


def test_pixels_of_a_dtype_the_protocol_has_no_name_for_are_refused():
    with pytest.raises(ValueError, match="pixels must be one of uint8, float16, float32, got int64"):
        oip.frame_pixels(np.zeros((3, 4, 4), np.int64), "input")


def test_every_request_of_the_bench_carries_the_extra_headers(server, tiny_models_dir, tmp_path):
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "bench.cli", "--url", server.url, "--models", str(tiny_models_dir),
               "--only", "resnet18", "--payloads", "photo,pixels", "--concurrency", "1", "--no-baseline",
               "--warmup-s", "0.2", "--duration-s", "0.5", "--raw-seconds", "0.02", "--out", str(out),
               "--header", "X-Request-ID: bench-header-check", "--header", "X-API-Key: not-a-secret"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    mine = {(r["method"], r["path"]) for r in logged if r.get("request_id") == "bench-header-check"}
    # the readiness check, the load on both routes, and the /metrics scrapes around each window
    assert {("GET", "/health/ready"), ("POST", "/classify"), ("POST", "/v2/models/resnet18/infer"),
            ("GET", "/metrics")} <= mine, mine
    results = json.loads((out / "results.json").read_text())
    assert [(r["payload"], r["errors"]) for r in results["service"]] == [("photo", {}), ("pixels", {})]
    assert results["service"][1]["requests"] > 0
    # results keep the header names, never their values (an API key would be one)
    assert "not-a-secret" not in (out / "results.json").read_text()
    assert results["meta"]["headers"] == ["X-Request-ID", "X-API-Key"]
    assert "'X-API-Key: ***'" in results["meta"]["command"]
