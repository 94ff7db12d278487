"""What API keys cost the service: throughput with keys on against keys off, in interleaved rounds.

Each round starts resnet-serve twice on the same models, once without keys and once with a keys
file (a fresh process each time, in alternating order, so that what tells two long-lived processes
apart, which an A/A run with `--control` shows, is not counted as the keys'), and drives each with
`--concurrency` closed-loop clients posting JPEGs (the HTTP/1.1 client of bench.load, with an
`Authorization: Bearer` header for the keyed one), so a drift in the box's load hits both alike.
Prints images per second and the server's CPU ms per request for each round, then each side's mean
and spread (min-max), and the microseconds of the per-request work itself (key check, trace start).
On a shared box the CPU per request is the steadier of the two: other processes take the service's
cores, not its instructions.

    python -m bench.studies.keys_cost --models models --payload a.jpg --rounds 5 --duration-s 8
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import timeit
from pathlib import Path
from urllib.parse import urlsplit

from bench.load import Connection, process_cpu_seconds
from bench.servers import start_service
from service import trace
from service.gate import keys as service_keys

KEY = "bench-0123456789abcdef0123456789abcdef"


async def drive(url: str, path: str, bodies: list[bytes], concurrency: int, warmup_s: float, duration_s: float,
                headers: str, pid: int) -> tuple[float, float]:
    """Images per second answered 200 in the window after `warmup_s`, and the server's CPU ms per
    request in it; any answer but 200 is an error."""
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

    async def window() -> float:
        await asyncio.sleep(max(0.0, window_start - loop.time()))
        before = process_cpu_seconds(pid)
        await asyncio.sleep(max(0.0, window_end - loop.time()))
        return process_cpu_seconds(pid) - before

    cpu, _ = await asyncio.gather(window(), asyncio.gather(*(worker(i) for i in range(concurrency))))
    return done / duration_s, cpu * 1000.0 / max(1, done)


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
    parser = argparse.ArgumentParser(prog="python -m bench.studies.keys_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="folder written by resnet-export")
    parser.add_argument("--model", default="resnet18", help="the model classified")
    parser.add_argument("--payload", type=Path, action="append", required=True, help="JPEG posted (repeatable)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--control", action="store_true",
                        help="an A/A run: the 'on' server gets no keys file either (the header is still sent), "
                             "to see what two identical servers differ by")  # fmt: skip
    args = parser.parse_args(argv)
    bodies = [p.read_bytes() for p in args.payload]
    path = f"/classify?model={args.model}"
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "keys").write_text(f"bench {KEY}\n")
        (root / "keys").chmod(0o600)
        serve = ("--providers", "cpu")
        keyed = serve if args.control else (*serve, "--api-keys-file", str(root / "keys"))
        sides = {"off": (serve, ""), "on": (keyed, f"Authorization: Bearer {KEY}\r\n")}
        rates, cpus = {"off": [], "on": []}, {"off": [], "on": []}
        for round_ in range(args.rounds):
            for name in (("off", "on") if round_ % 2 == 0 else ("on", "off")):  # alternate who goes first
                flags, headers = sides[name]
                with start_service(args.models, args.model, flags, root / f"{name}-{round_}") as server:
                    load = drive(server.url, path, bodies, args.concurrency, args.warmup_s, args.duration_s, headers,
                                 server.pid)  # fmt: skip
                    rate, cpu = asyncio.run(load)
                rates[name].append(rate)
                cpus[name].append(cpu)
                print(f"round {round_ + 1} keys {name:3}: {rate:7.1f} img/s, {cpu:.3f} server CPU ms per request",
                      flush=True)  # fmt: skip
    for name, values in rates.items():
        cpu = cpus[name]
        print(f"keys {name:3}: mean {statistics.mean(values):.1f} img/s, spread {min(values):.1f}-{max(values):.1f}; "
              f"server CPU {statistics.mean(cpu):.3f} ms per request, spread {min(cpu):.3f}-{max(cpu):.3f}; "
              f"{len(values)} rounds of {args.duration_s:g} s at {args.concurrency} clients")
    for name, us in per_request_us().items():
        print(f"{name}: {us:.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
