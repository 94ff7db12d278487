"""What API keys cost the service: throughput with keys on against keys off, in interleaved rounds.

Two resnet-serve processes on the same models, one without keys and one with a keys file; each round
drives one of them, then the other, with `--concurrency` closed-loop clients posting JPEGs (the
HTTP/1.1 client of bench.load, with an `Authorization: Bearer` header for the keyed one), so a
drift in the box's load hits both alike. Prints images per second per round, then each side's mean
and spread (min-max), and the microseconds of the per-request work itself (key check, trace start).

    python -m bench.keys_cost --models models --payload a.jpg --rounds 5 --duration-s 8
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import timeit
from pathlib import Path
from urllib.parse import urlsplit

from bench.load import Connection
from bench.servers import start_service
from service import keys as service_keys, trace

KEY = "bench-0123456789abcdef0123456789abcdef"


async def drive(url: str, path: str, bodies: list[bytes], concurrency: int, warmup_s: float, duration_s: float,
                headers: str) -> float:
    """Images per second answered 200 in the window after `warmup_s`; any other answer is an error."""
    target = urlsplit(url)
    loop = asyncio.get_running_loop()
    window_start = loop.time() + warmup_s
    window_end = window_start + duration_s
    done = 0

    async def worker(offset: int) -> None:
        nonlocal done
        connection = Connection(target.hostname, target.port)
        turn = offset
        try:
            while loop.time() < window_end:
                status, body = await connection.request("POST", path, bodies[turn % len(bodies)], "image/jpeg", headers)
                if status != 200:
                    raise RuntimeError(f"{url}{path} answered {status}: {body[:200]!r}")
                if window_start <= loop.time() <= window_end:
                    done += 1
                turn += 1
        finally:
            await connection.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return done / duration_s


def per_request_us() -> dict[str, float]:
    """Microseconds of the per-request work on its own: the key check (2 and 100 keys), a trace start."""
    few = service_keys.parse(f"a {KEY}\nb {KEY[::-1]}\n", "bench")
    many = service_keys.parse("".join(f"k{i} {KEY}{i:04d}\n" for i in range(100)), "bench")
    headers = [(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
    calls = {
        "key check, 2 keys": lambda: few.name_of(KEY.encode()),
        "key check, 100 keys": lambda: many.name_of(KEY.encode()),
        "trace start (traceparent in)": lambda: trace.start(headers),
        "trace start (new trace)": lambda: trace.start([]),
    }
    return {name: min(timeit.repeat(call, number=20_000, repeat=5)) / 20_000 * 1e6 for name, call in calls.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.keys_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="folder written by resnet-export")
    parser.add_argument("--model", default="resnet18", help="the model classified")
    parser.add_argument("--payload", type=Path, action="append", required=True, help="JPEG posted (repeatable)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--duration-s", type=float, default=8.0)
    args = parser.parse_args(argv)
    bodies = [p.read_bytes() for p in args.payload]
    path = f"/classify?model={args.model}"
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "keys").write_text(f"bench {KEY}\n")
        (root / "keys").chmod(0o600)
        serve, keyed = ("--providers", "cpu"), ("--providers", "cpu", "--api-keys-file", str(root / "keys"))
        with start_service(args.models, args.model, serve, root / "off") as off, \
                start_service(args.models, args.model, keyed, root / "on") as on:
            sides = {"off": (off.url, ""), "on": (on.url, f"Authorization: Bearer {KEY}\r\n")}
            rates = {"off": [], "on": []}
            for round_ in range(args.rounds):
                for name in (("off", "on") if round_ % 2 == 0 else ("on", "off")):  # alternate who goes first
                    url, headers = sides[name]
                    load = drive(url, path, bodies, args.concurrency, args.warmup_s, args.duration_s, headers)
                    rate = asyncio.run(load)
                    rates[name].append(rate)
                    print(f"round {round_ + 1} keys {name:3}: {rate:7.1f} img/s", flush=True)
    for name, values in rates.items():
        print(f"keys {name:3}: mean {statistics.mean(values):.1f} img/s, spread {min(values):.1f}-{max(values):.1f} "
              f"over {len(values)} rounds of {args.duration_s:g} s at {args.concurrency} clients")
    for name, us in per_request_us().items():
        print(f"{name}: {us:.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
