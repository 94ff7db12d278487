"""Shared fixtures for the service tests: real resnet-serve processes on free loopback ports, the
real photos, and direct ONNX Runtime sessions on the same model files to check answers against.

The models come from the shared `tiny_models_dir` fixture (tests/conftest.py): small fp32 models
written by resnet-export, so every server here starts and warms up in about a second.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageOps

from artifact import ModelCard

from bench import photos

from bench.page import browser as chromium

IMAGES = photos.folder()  # real photos from scikit-image's wheel, never from outside the repository
PHOTOS = photos.PHOTOS


@pytest.fixture(autouse=True)
def restore_logging():
    """In-process CLI runs (service.cli.main) send the root logger to JSON lines on the stderr of the moment: undo it after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def _resnet_serve() -> list[str]:
    """The installed console script, as a user runs it; `python -m service.cli` where it is missing."""
    script = Path(sys.executable).with_name("resnet-serve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running resnet-serve process."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(models: Path, log_dir: Path, *flags: str, wait_ready: bool = True) -> Server:
    """Start resnet-serve on a free port; wait until it answers (and, by default, is ready)."""
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("RESNET_SERVE_")}
    command = [*_resnet_serve(), "--models", str(models), "--port", str(port), *flags]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    path = "/health/ready" if wait_ready else "/health/live"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"resnet-serve exited with {process.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(server.url + path, timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"resnet-serve did not answer {path} within 60 s:\n{server.log()[-3000:]}")


@pytest.fixture(scope="session")
def models_dir(tiny_models_dir) -> Path:
    return Path(tiny_models_dir)


@pytest.fixture(scope="session")
def server(models_dir, tmp_path_factory) -> Server:
    """One server with default settings (providers cuda,cpu: falls back to CPU on a CPU box)."""
    server = start_server(models_dir, tmp_path_factory.mktemp("server"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """A headless Chromium driven by Selenium, shared by the browser tests; skips, saying why, where there is none."""
    reason = chromium.missing()
    if reason:
        pytest.skip(reason)
    driver = chromium.start(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


class Reference:
    """A model file run directly with ONNX Runtime, one image at a time: the expected answers."""

    def __init__(self, path: Path) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.card = ModelCard.from_metadata(self.session.get_modelmeta().custom_metadata_map)

    def probabilities(self, array: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run([self.card.output_name], {self.card.input_name: array[None]})
        exp = np.exp(logits[0] - logits[0].max())
        return exp / exp.sum()


@pytest.fixture(scope="session")
def references(models_dir) -> dict[str, Reference]:
    refs = [Reference(path) for path in sorted(models_dir.glob("*/model.onnx"))]
    return {ref.card.name: ref for ref in refs}


def photo(name: str) -> Image.Image:
    with Image.open(IMAGES / name) as image:
        return image.copy()


def encode(image: Image.Image, format: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def variants(count: int) -> list[bytes]:
    """`count` different JPEGs cut from the real photos (crops, flips), so each has its own answer."""
    out = []
    for i in range(count):
        image = photo(PHOTOS[i % len(PHOTOS)]).convert("RGB")
        w, h = image.size
        step = i // len(PHOTOS)
        box = (step * 7 % (w // 3), step * 5 % (h // 3), w - step * 3 % (w // 3), h - step * 11 % (h // 3))
        image = image.crop(box)
        if step % 2:
            image = ImageOps.mirror(image)
        out.append(encode(image, quality=90))
    return out


def assert_answers(predictions: list[dict], expected: np.ndarray, card: ModelCard, k: int) -> None:
    """The predictions are the true top k of `expected` (one image's probabilities), highest first,
    each with its class's label and id; probabilities agree to 1e-5 (batched vs single inference)."""
    assert len(predictions) == k
    for p in predictions:
        assert list(p) == ["label", "class_id", "class_index", "probability"]
        i = p["class_index"]
        assert p["label"] == card.class_names[i] and p["class_id"] == card.class_ids[i]
        assert abs(p["probability"] - float(expected[i])) < 1e-5
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    chosen = {p["class_index"] for p in predictions}
    rest = [float(expected[i]) for i in range(card.num_classes) if i not in chosen]
    assert not rest or min(probabilities) >= max(rest) - 1e-5


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height, followed by almost no pixel data."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)
