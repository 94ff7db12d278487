"""The closed-loop load generator: N connections, each posting one image and waiting for the answer.

It runs in its own process (resnet-bench starts it), so its CPU shows up apart from the service's,
and it reports that CPU (`client_cpu_cores`): on a 2-core box the client competes with the server.
It speaks HTTP/1.1 keep-alive directly on asyncio streams, a fraction of httpx's client CPU per
request (docs/performance.md).

Warm-up requests are sent and thrown away; then every answer that arrives inside the measured window
counts, and requests still in flight when the window closes are finished but not counted. /metrics is
scraped at both ends of the window (when the target has one) for the service's mean batch size.

    python -m bench.load --url http://127.0.0.1:8000 --path '/classify?model=resnet18' \
        --payload a.jpg --payload b.jpg --concurrency 16 --warmup-s 2 --duration-s 10
    python -m bench.load --url http://127.0.0.1:8000 --path /v2/models/resnet18/infer --protocol oip-pixels \
        --payload results/payloads/pixels-resnet18-0.npy --concurrency 16 --header 'X-Request-ID: bench'
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from bench import oip

# How payload files are posted: "classify" as raw image bodies; "oip" as the Open Inference Protocol's
# `image` input (one BYTES element); "oip-pixels" (.npy files) as the model's own input tensor.
PROTOCOLS = ("classify", "oip", "oip-pixels")


@dataclass(frozen=True)
class LoadConfig:
    """One closed-loop run against one endpoint."""

    url: str  # base URL of the target, e.g. http://127.0.0.1:8000
    path: str  # request path with query, e.g. /classify?model=resnet18
    payloads: tuple[Path, ...]  # files posted in turn: images, or .npy pixels for protocol oip-pixels
    concurrency: int  # connections, each with one request outstanding at a time
    warmup_s: float = 2.0  # seconds of load before the measured window, not counted
    duration_s: float = 10.0  # seconds of the measured window
    metrics_path: str | None = "/metrics"  # Prometheus endpoint scraped at both ends; None: none
    timeout_s: float = 120.0  # one request's limit; a request past it counts as an error
    server_pid: int | None = None  # the target's process on this machine, for its CPU use; None: unknown
    protocol: str = "classify"  # one of PROTOCOLS
    input_name: str = "input"  # the model's input tensor, for protocol oip-pixels (its card's input_name)
    headers: tuple[str, ...] = ()  # extra "Name: value" headers on every request, the /metrics scrapes too

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")


@dataclass
class LoadResult:
    """What one run measured; latencies in ms, throughput in images per second."""

    concurrency: int
    requests: int  # answered 200 inside the window
    errors: dict[str, int]  # status (or exception name) -> count, inside the window
    window_s: float
    images_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    client_cpu_cores: float  # this process's CPU seconds per wall second over the window
    server_cpu_cores: float | None  # the target process's, when its pid was given
    batch_sizes: dict[str, float] | None = None  # model -> mean batch size over the window (from /metrics)
    latencies_ms: list[float] = field(default_factory=list)


class Connection:
    """One keep-alive HTTP/1.1 connection; reopened when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "image/jpeg", headers: str = ""
    ) -> tuple[int, bytes]:
        """Send one request, return (status, body); `headers` are extra "Name: value\r\n" lines."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += f"Content-Type: {content_type}\r\n"
        head += headers
        self.writer.write(head.encode("latin-1") + b"\r\n" + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            await self.close()
            raise ConnectionResetError("the server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length, close = None, False
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding":
                raise ValueError("chunked responses are not supported by this client")
        payload = await self.reader.readexactly(length) if length else b""
        if close or length is None:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.writer = None


_BATCH = re.compile(r'^resnet_batch_size_(sum|count)\{model="([^"]*)"\} (\S+)$', re.M)


def batch_totals(metrics_text: str) -> dict[str, tuple[float, float]]:
    """model -> (sum, count) of the service's batch-size histogram."""
    totals: dict[str, list[float]] = {}
    for kind, model, value in _BATCH.findall(metrics_text):
        totals.setdefault(model, [0.0, 0.0])[0 if kind == "sum" else 1] = float(value)
    return {model: (s, c) for model, (s, c) in totals.items()}


async def _scrape(url, path: str | None, headers: str) -> dict[str, tuple[float, float]] | None:
    if path is None:
        return None
    connection = Connection(url.hostname, url.port)
    try:
        status, body = await connection.request("GET", path, headers=headers)
    finally:
        await connection.close()
    return batch_totals(body.decode()) if status == 200 else None


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process and all its threads (Linux /proc), None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


async def run(config: LoadConfig) -> LoadResult:
    """Drive the target for warmup_s + duration_s and measure the window."""
    url = urlsplit(config.url)
    common = "".join(f"{header}\r\n" for header in config.headers)
    per_request = 1.0  # images in one request: a pixels file with a batch axis holds several
    if config.protocol == "classify":
        bodies = [Path(p).read_bytes() for p in config.payloads]
        extra, content_type = [common] * len(bodies), "image/jpeg"
    else:  # framed as tritonclient frames them
        if config.protocol == "oip":
            framed = [oip.frame(Path(p).read_bytes()) for p in config.payloads]
        else:
            arrays = [np.load(p, allow_pickle=False) for p in config.payloads]
            per_request = float(np.mean([len(a) if a.ndim == 4 else 1 for a in arrays]))
            framed = [oip.frame_pixels(array, config.input_name) for array in arrays]
        bodies = [body for body, _ in framed]
        extra = [f"{oip.HEADER_LENGTH}: {length}\r\n{common}" for _, length in framed]
        content_type = "application/octet-stream"
    turn = itertools.cycle(range(len(bodies)))
    loop = asyncio.get_running_loop()
    started = loop.time()
    window_start = started + config.warmup_s
    window_end = window_start + config.duration_s
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def worker() -> None:
        connection = Connection(url.hostname, url.port)
        try:
            while (sent := loop.time()) < window_end:
                index = next(turn)
                request = connection.request("POST", config.path, bodies[index], content_type, extra[index])
                try:
                    status, _ = await asyncio.wait_for(request, config.timeout_s)
                    outcome = "200" if status == 200 else str(status)
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
                    await connection.close()
                    outcome = type(error).__name__
                done = loop.time()
                if window_start <= done <= window_end:
                    if outcome == "200":
                        latencies.append((done - sent) * 1000.0)
                    else:
                        errors[outcome] = errors.get(outcome, 0) + 1
        finally:
            await connection.close()

    async def window() -> tuple:
        await asyncio.sleep(max(0.0, window_start - loop.time()))
        batches = await _scrape(url, config.metrics_path, common)
        before = (batches, _cpu_seconds(), process_cpu_seconds(config.server_pid), time.perf_counter())
        await asyncio.sleep(max(0.0, window_end - loop.time()))
        cpu, server_cpu, wall = _cpu_seconds(), process_cpu_seconds(config.server_pid), time.perf_counter()
        after = await _scrape(url, config.metrics_path, common)
        return before, (after, cpu, server_cpu, wall)

    tasks = [asyncio.ensure_future(worker()) for _ in range(config.concurrency)]
    (batches0, cpu0, server0, wall0), (batches1, cpu1, server1, wall1) = await window()
    await asyncio.gather(*tasks)
    seconds = wall1 - wall0
    values = np.asarray(latencies)
    pct = (lambda q: round(float(np.percentile(values, q)), 2)) if len(values) else (lambda q: None)
    return LoadResult(
        concurrency=config.concurrency,
        requests=len(values),
        errors=errors,
        window_s=round(seconds, 3),
        images_per_s=round(len(values) * per_request / seconds, 2),
        p50_ms=pct(50),
        p95_ms=pct(95),
        p99_ms=pct(99),
        mean_ms=round(float(values.mean()), 2) if len(values) else None,
        client_cpu_cores=round((cpu1 - cpu0) / seconds, 3),
        server_cpu_cores=None if server0 is None or server1 is None else round((server1 - server0) / seconds, 3),
        batch_sizes=_mean_batches(batches0, batches1),
        latencies_ms=[round(v, 3) for v in latencies],
    )


def _mean_batches(before, after) -> dict[str, float] | None:
    if before is None or after is None:
        return None
    means = {}
    for model, (s1, c1) in after.items():
        s0, c0 = before.get(model, (0.0, 0.0))
        if c1 > c0:
            means[model] = round((s1 - s0) / (c1 - c0), 2)
    return means


def main(argv: list[str] | None = None) -> int:
    """python -m bench.load ...: one run, its LoadResult as JSON on stdout."""
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--payload", action="append", required=True, type=Path)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--warmup-s", type=float, default=LoadConfig.warmup_s)
    parser.add_argument("--duration-s", type=float, default=LoadConfig.duration_s)
    parser.add_argument("--no-metrics", action="store_true", help="the target has no /metrics")
    parser.add_argument("--server-pid", type=int, help="the target's pid on this machine, for its CPU use")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="classify",
                        help="raw image bodies (for /classify), or Open Inference Protocol binary requests "
                             "(/v2/.../infer) with the image file or, from .npy files, the model's input tensor")
    parser.add_argument("--input-name", default=LoadConfig.input_name, help="the model's input (oip-pixels)")
    parser.add_argument("--header", action="append", default=[], help="'Name: value' on every request (repeatable)")
    args = parser.parse_args(argv)
    config = LoadConfig(args.url, args.path, tuple(args.payload), args.concurrency, args.warmup_s,
                        args.duration_s, None if args.no_metrics else LoadConfig.metrics_path, server_pid=args.server_pid,
                        protocol=args.protocol, input_name=args.input_name, headers=tuple(args.header))
    result = asyncio.run(run(config))
    json.dump(asdict(result), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
