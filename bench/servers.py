"""Processes the bench starts: resnet-serve, the PyTorch eager baseline, and one load generator run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench import oip
from bench.payloads import PIXELS_PER_REQUEST

READY_TIMEOUT_S = 300.0  # resnet152 fp32 + int8 warm-up at every batch shape takes a while on 2 busy cores


@dataclass
class Process:
    """A server the bench started, its URL, its log file, and the headers its clients send."""

    url: str
    process: subprocess.Popen
    log_path: Path
    headers: tuple[str, ...] = ()  # "Name: value", the bench's --header

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def header_dict(self) -> dict[str, str]:
        """`headers` as an HTTP client library takes them."""
        return header_dict(self.headers)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _python_module(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def header_dict(headers: tuple[str, ...]) -> dict[str, str]:
    """"Name: value" strings as {name: value}."""
    return {name.strip(): value.strip() for name, value in (header.split(":", 1) for header in headers)}


def _start(command: list[str], log_path: Path, port: int, headers: tuple[str, ...] = ()) -> Process:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Process(f"http://127.0.0.1:{port}", process, log_path, headers)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(command[:3])} exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(ready_request(server.url, headers), timeout=2) as answer:
                if answer.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{' '.join(command[:3])} was not ready within {READY_TIMEOUT_S:.0f} s; log: {log_path}")


def ready_request(url: str, headers: tuple[str, ...] = ()) -> urllib.request.Request:
    """GET /health/ready with the bench's extra "Name: value" headers."""
    return urllib.request.Request(url + "/health/ready", headers=header_dict(headers))


def start_service(models: Path, default_model: str, serve_args: tuple[str, ...], log_dir: Path,
                  headers: tuple[str, ...] = ()) -> Process:
    """resnet-serve on a free port, waited on until /health/ready says 200 (asked with `headers`)."""
    port = free_port()
    command = [*_python_module("service.cli"), "--models", str(models), "--port", str(port),
               "--default-model", default_model, "--log-level", "warning", *serve_args]
    return _start(command, log_dir / "resnet-serve.log", port, headers)


def start_baseline(model_file: Path, threads: int, log_dir: Path) -> Process:
    """The PyTorch eager baseline (bench.baseline) for one model file."""
    port = free_port()
    command = [*_python_module("bench.baseline"), "--model", str(model_file), "--port", str(port), "--threads", str(threads)]
    return _start(command, log_dir / f"baseline-{model_file.parent.name}.log", port)


def load_request(kind: str, model: str, files: list[Path], input_name: str, headers: tuple[str, ...]) -> dict:
    """run_load's arguments for one payload kind and model: route, files, protocol, headers."""
    if kind in PIXELS_PER_REQUEST:  # the model's own input tensor, which only the Open Inference Protocol takes
        return {"path": oip.path(model), "payloads": files, "protocol": "oip-pixels", "input_name": input_name,
                "headers": headers}
    return {"path": f"/classify?model={model}", "payloads": files, "headers": headers}


def served_subset(folder: Path, model_files: list[Path]) -> Path:
    """A models folder of symlinks to just these models' folders."""
    if folder.exists():
        for link in folder.iterdir():
            link.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for path in model_files:
        (folder / path.parent.name).symlink_to(path.parent.resolve(), target_is_directory=True)
    return folder


def run_load(url: str, path: str, payloads: list[Path], concurrency: int, warmup_s: float, duration_s: float,
             server_pid: int | None, metrics: bool = True, protocol: str = "classify", input_name: str = "input",
             headers: tuple[str, ...] = ()) -> dict:
    """One closed-loop run in its own process (bench.load); its result as a dict."""
    command = [*_python_module("bench.load"), "--url", url, "--path", path, "--concurrency", str(concurrency),
               "--warmup-s", str(warmup_s), "--duration-s", str(duration_s), "--protocol", protocol,
               "--input-name", input_name]
    command += [arg for p in payloads for arg in ("--payload", str(p))]
    command += [arg for header in headers for arg in ("--header", header)]
    if server_pid is not None:
        command += ["--server-pid", str(server_pid)]
    if not metrics:
        command.append("--no-metrics")
    done = subprocess.run(command, capture_output=True, text=True, timeout=warmup_s + duration_s + 300)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)
