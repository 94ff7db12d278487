"""Holding under abuse, through real resnet-serve processes and raw sockets: refusal from
the headers before the body is read, the read budget, limits that cannot all hold refused at start-up,
a dead batching loop failing its waiters at once and the probes, and slow or idle clients cut off."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from .conftest import encode, photo, start_server
from .test_operations import post, slow_png, wait_for_queue_depth


def connect(url: str, timeout: float = 30) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout bounds it)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def head(path: str, content_length: int | None, content_type: str = "image/jpeg", extra: str = "") -> bytes:
    length = f"Content-Length: {content_length}\r\n" if content_length is not None else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n{length}{extra}\r\n"
    ).encode()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_limits_that_cannot_all_hold_are_refused_at_start_up(models_dir):
    for flags, message in (
        (["--queue-size", "4", "--max-images", "8"], "max_images (8) must not exceed queue_size (4)"),
        (["--max-body-bytes", "300000000"], "max_body_bytes (300000000) must not exceed read_budget_bytes"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", "--models", str(models_dir), *flags],
            capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and message in done.stderr


class Flood:
    """Threads posting slow-to-decode PNGs to resnet18 without pause, keeping its queue full."""

    def __init__(self, url: str, threads: int) -> None:
        self.url, self.stop, self.data = url, threading.Event(), slow_png((0, 10, 20))
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            post(self.url, self.data, "image/png")

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def test_a_model_at_capacity_refuses_an_announced_body_without_reading_it(models_dir, tmp_path):
    # The attack: 8 MB announced to a saturated model, nothing sent. Before: a 504 after 30 s.
    server = start_server(
        models_dir, tmp_path, "--providers", "cpu", "--queue-size", "2", "--max-images", "2",
        "--decode-threads", "1", "--body-timeout-s", "3",
    )  # fmt: skip
    try:
        with Flood(server.url, threads=4):
            wait_for_queue_depth(server.url, 2)
            for _ in range(10):  # the flood refills the queue within a decode; retry the rare gap
                with connect(server.url) as sock:
                    sock.sendall(head("/classify", 8_000_000))
                    response = read_until_closed(sock)  # the server closes: it will not read the 8 MB
                if status_of(response) == 503:
                    break
    finally:
        server.stop()
    text = response.decode("latin-1").lower()
    assert status_of(response) == 503, text
    assert "retry-after:" in text and "connection: close" in text and '"code":"overloaded"' in text
    assert "images in flight" in text


def test_the_read_budget_refuses_announced_and_chunked_bodies(models_dir, tmp_path):
    server = start_server(
        models_dir, tmp_path, "--providers", "cpu", "--read-budget-bytes", "1000000", "--max-body-bytes", "600000",
        "--body-timeout-s", "30",
    )  # fmt: skip
    jpeg = encode(photo("color.png").convert("RGB"), quality=90)
    try:
        holder = connect(server.url)
        holder.sendall(head("/classify", 600_000))  # announces 600 kB, sends nothing: holds the budget
        deadline = time.monotonic() + 20
        while True:  # until the server has taken the holder's headers (the first refusal says so)
            announced = post(server.url, jpeg + bytes(600_000 - len(jpeg)))
            if announced.status_code == 503 or time.monotonic() > deadline:
                break
        streamed = post(server.url, (jpeg[i : i + 65536] for i in range(0, len(jpeg), 65536)))
        padded = (bytes(100_000) for _ in range(5))  # 500 kB with no Content-Length: over what is left
        chunked = post(server.url, padded)
        holder.close()  # its budget comes back when the server sees it go
        deadline = time.monotonic() + 20
        while (after := post(server.url, jpeg + bytes(600_000 - len(jpeg)))).status_code == 503:
            assert time.monotonic() < deadline, "the budget never came back"
            time.sleep(0.05)
    finally:
        server.stop()
    assert announced.status_code == 503 and "read_budget_bytes = 1000000" in announced.json()["error"]["message"]
    assert announced.headers["connection"] == "close" and announced.headers["retry-after"] == "1"
    assert streamed.status_code == 200, streamed.text  # a small chunked body still fits
    assert chunked.status_code == 503 and chunked.json()["error"]["code"] == "overloaded"
    assert after.status_code == 200, after.text


# A real fault inside the loop's own code path: the metrics observer it calls as each batch starts
# raises for resnet18. What is under test (the supervision, the probes, the HTTP answers) is untouched.
FAULT = """
from service.engine import pipeline
_on_batch = pipeline.ModelPipeline._on_batch
def _broken(self, waits):
    if self.model.name == "resnet18":
        raise RuntimeError("injected fault: the queue-wait histogram is broken")
    _on_batch(self, waits)
pipeline.ModelPipeline._on_batch = _broken
"""


def test_a_dead_batching_loop_fails_waiters_at_once_and_fails_the_probes(models_dir, tmp_path, monkeypatch):
    (tmp_path / "fault").mkdir()
    (tmp_path / "fault" / "sitecustomize.py").write_text(FAULT)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'fault'}:{Path(__file__).parents[2]}")
    # A 10-minute deadline: a waiter that were only failed at its deadline would time the client out.
    server = start_server(models_dir, tmp_path, "--providers", "cpu", "--request-timeout-s", "600")
    jpeg = encode(photo("coins.png").convert("RGB"), quality=90)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            threads, answers = [], []
            for _ in range(4):
                threads.append(threading.Thread(target=lambda: answers.append(post(server.url, jpeg))))
                threads[-1].start()
            for thread in threads:
                thread.join()
            later = post(server.url, jpeg)
            other = post(server.url, jpeg, params={"model": "resnet20"})
            ready, live = client.get("/health/ready"), client.get("/health/live")
    finally:
        server.stop()
    for response in [*answers, later]:
        assert response.status_code == 500, response.text
        assert response.json()["error"]["code"] == "batcher_failed"
        assert "injected fault" in response.json()["error"]["message"]
    assert other.status_code == 200, other.text  # the other model's loop is alive
    for probe in (ready, live):
        assert probe.status_code == 503 and probe.json()["status"] == "failed"
        assert "injected fault" in probe.json()["failures"]["resnet18"] and "resnet20" not in probe.json()["failures"]
    assert "resnet18: the batching loop died" in server.log() and "injected fault" in server.log()


def test_idle_slow_header_and_trickling_clients_are_cut_off(models_dir, tmp_path):
    server = start_server(
        models_dir, tmp_path, "--providers", "cpu", "--header-timeout-s", "1", "--body-timeout-s", "1.5",
        "--keep-alive-timeout-s", "1",
    )  # fmt: skip
    results: dict[str, list[bytes]] = {"idle": [], "slow header": [], "trickle": [], "after a response": []}

    def idle() -> None:
        with connect(server.url) as sock:
            results["idle"].append(read_until_closed(sock))

    def drip(kind: str, first: bytes, drops: bytes) -> None:
        """Send `first`, then one byte of `drops` every 0.2 s; collect what the server answers."""
        with connect(server.url) as sock:
            sock.sendall(first)
            sock.settimeout(0.2)
            received = b""
            for byte in drops:
                try:
                    received = sock.recv(65536)
                    break  # an answer, or b"": closed by the server
                except TimeoutError:
                    pass
                except OSError:  # reset by the server
                    break
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break
            sock.settimeout(30)
            try:
                received += read_until_closed(sock)
            except OSError:
                pass
            results[kind].append(received)

    def after_a_response() -> None:
        with connect(server.url) as sock:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n")
            results["after a response"].append(read_until_closed(sock))

    header_lines = b"X-Slow: " + b"a" * 200 + b"\r\n"  # 5 lines of it would take 40 s at this pace
    workers = [threading.Thread(target=idle) for _ in range(5)]
    workers += [
        threading.Thread(target=drip, args=("slow header", b"POST /classify HTTP/1.1\r\n", header_lines * 5))
        for _ in range(5)
    ]
    workers += [
        threading.Thread(target=drip, args=("trickle", head("/classify", 200), bytes(200))) for _ in range(5)
    ]
    workers += [threading.Thread(target=after_a_response) for _ in range(2)]
    try:
        for worker in workers:
            worker.start()
        meanwhile = post(server.url, encode(photo("color.png").convert("RGB"), quality=90))
        for worker in workers:
            worker.join()
    finally:
        server.stop()
    assert meanwhile.status_code == 200, meanwhile.text  # a normal client is served all the while
    assert results["idle"] == [b""] * 5  # closed without a word: no request was ever made
    assert results["slow header"] == [b""] * 5
    for answer in results["trickle"]:
        text = answer.decode("latin-1").lower()
        assert status_of(answer) == 408 and "connection: close" in text and '"code":"body_timeout"' in text
    for answer in results["after a response"]:
        assert status_of(answer) == 200  # then closed after the keep-alive timeout
