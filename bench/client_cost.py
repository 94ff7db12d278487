"""Why bench.load speaks HTTP itself: client CPU per request, httpx.AsyncClient against bench.load.

Sequential posts of one payload to a running service, after 20 warm-up requests; prints the client's
CPU milliseconds per request for each client, twice, alternating. On the dev box (resnet-serve,
500x375 JPEG of 67 kB): httpx 1.2-1.4 ms, bench.load 0.17-0.19 ms.

    python -m bench.client_cost http://127.0.0.1:8000 '/classify?model=resnet18' results/payloads/photo-0.jpg
"""

from __future__ import annotations

import asyncio
import resource
import sys
from urllib.parse import urlsplit

import httpx

from bench.load import Connection

REQUESTS = 300


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def with_httpx(url: str, path: str, body: bytes) -> float:
    """CPU seconds per request through httpx.AsyncClient (keep-alive)."""
    async with httpx.AsyncClient() as client:
        post = lambda: client.post(url + path, content=body, headers={"Content-Type": "image/jpeg"})  # noqa: E731
        for _ in range(20):
            await post()
        started = _cpu()
        for _ in range(REQUESTS):
            (await post()).raise_for_status()
        return (_cpu() - started) / REQUESTS


async def with_bench_load(url: str, path: str, body: bytes) -> float:
    """CPU seconds per request through bench.load.Connection (keep-alive)."""
    parts = urlsplit(url)
    connection = Connection(parts.hostname, parts.port)
    for _ in range(20):
        await connection.request("POST", path, body)
    started = _cpu()
    for _ in range(REQUESTS):
        status, _ = await connection.request("POST", path, body)
        if status != 200:
            raise RuntimeError(f"the service answered {status}")
    await connection.close()
    return (_cpu() - started) / REQUESTS


def main(argv: list[str]) -> int:
    url, path, payload = argv
    body = open(payload, "rb").read()
    for client in (with_httpx, with_bench_load) * 2:
        print(f"{client.__name__}: {asyncio.run(client(url, path, body)) * 1e3:.2f} ms client CPU per request")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
