"""What a JSON body of base64 images costs against the same image sent as the raw body.

Two measurements on the bench's JPEG payloads (bench/payloads.py: a 500x375 photo, a 12 MP photo):

- `parse`: the service's own work on the body, in this process: service.api.uploads.read_raw against
  read_json over the same bytes, delivered in 64 KiB chunks as uvicorn delivers them.
- `request`: POST /classify to a real resnet-serve, raw and JSON alternating on one keep-alive
  connection, client time per request; the client's base64 + JSON encoding is timed apart.

Each figure is the median with the 10th and 90th percentiles of `--repeats` runs.

    python -m bench.studies.json_cost --models models --out results/json-cost
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import time
from pathlib import Path

import httpx

from artifact import write_atomically
from bench import payloads, servers
from service.api import uploads

CHUNK = 65_536  # bytes per ASGI body message (uvicorn's h11 reads 64 KiB at a time)
MAX_BODY = 20_000_000  # resnet-serve's default max_body_bytes
MAX_IMAGES = 32


def spread(samples: list[float]) -> dict[str, float]:
    """Median, 10th and 90th percentile, in ms."""
    deciles = statistics.quantiles(samples, n=10)
    return {"median_ms": statistics.median(samples) * 1e3, "p10_ms": deciles[0] * 1e3, "p90_ms": deciles[-1] * 1e3}


async def _chunks(body: bytes):
    for start in range(0, len(body), CHUNK):
        yield body[start : start + CHUNK]


def parse_cost(image: bytes, repeats: int) -> dict[str, dict[str, float]]:
    """read_raw and read_json over the same image, alternating."""
    body = json.dumps({"images": [base64.b64encode(image).decode()]}).encode()
    limit = uploads.json_body_limit(MAX_BODY, MAX_IMAGES, 10 * MAX_BODY)
    raw, as_json = [], []

    async def run() -> None:
        for _ in range(repeats):
            started = time.perf_counter()
            assert await uploads.read_raw(_chunks(image), MAX_BODY) == image
            raw.append(time.perf_counter() - started)
            started = time.perf_counter()
            assert await uploads.read_json(_chunks(body), limit, MAX_BODY, MAX_IMAGES) == [image]
            as_json.append(time.perf_counter() - started)

    asyncio.run(run())
    return {"raw": spread(raw), "json": spread(as_json)}


def request_cost(url: str, image: bytes, repeats: int) -> dict[str, dict[str, float]]:
    """POST /classify with the raw image and with JSON, alternating on one connection."""
    encode = []
    for _ in range(repeats):
        started = time.perf_counter()
        body = json.dumps({"image": base64.b64encode(image).decode()}).encode()
        encode.append(time.perf_counter() - started)
    raw, as_json = [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(3):  # warm the connection and the model's batch shape
            client.post("/classify", content=image, headers={"Content-Type": "image/jpeg"}).raise_for_status()
        for _ in range(repeats):
            for samples, content, kind in ((raw, image, "image/jpeg"), (as_json, body, "application/json")):
                started = time.perf_counter()
                client.post("/classify", content=content, headers={"Content-Type": kind}).raise_for_status()
                samples.append(time.perf_counter() - started)
    return {"raw": spread(raw), "json": spread(as_json), "client_encode": spread(encode)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.json_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="models folder resnet-serve serves")
    parser.add_argument("--default-model", default="", help="the model the requests go to (default: the shallowest)")
    parser.add_argument("--out", type=Path, default=Path("results/json-cost"))
    parser.add_argument("--repeats", type=int, default=40, help="runs of each measurement per payload")
    args = parser.parse_args(argv)
    files = payloads.build(args.out / "payloads")
    images = {"photo": files["photo"][0].read_bytes(), "12mp": files["12mp"][0].read_bytes()}
    server = servers.start_service(args.models, args.default_model, ("--providers", "cpu"), args.out)
    try:
        results = {
            kind: {
                "bytes": len(image),
                "json_bytes": len(json.dumps({"image": base64.b64encode(image).decode()})),
                "parse": parse_cost(image, args.repeats),
                "request": request_cost(server.url, image, args.repeats),
            }
            for kind, image in images.items()
        }
    finally:
        server.stop()
    text = json.dumps({"repeats": args.repeats, "models": str(args.models), "results": results}, indent=2)
    write_atomically(args.out / "json_cost.json", lambda f: f.write(text.encode()))
    for kind, result in results.items():
        print(f"{kind}: {result['bytes']} bytes raw, {result['json_bytes']} as JSON")
        for stage in ("parse", "request"):
            for name, s in result[stage].items():
                print(f"  {stage:8} {name:14} {s['median_ms']:9.3f} ms  (p10 {s['p10_ms']:.3f}, p90 {s['p90_ms']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
