"""Named robustness scenarios of issue 12, each against a fresh resnet-serve: results as JSON.

    resnet-bench scenario two-models --models models --out results/scenarios
    resnet-bench scenario two-models --models models -- --intra-op-threads 2   # flags for resnet-serve
    resnet-bench scenario slow-clients --models models
    resnet-bench scenario soak --models models --duration-s 600 --clients 24
    resnet-bench scenario faults --models models     # replaces resnet18/model.onnx for a moment

two-models: each model's solo throughput (concurrency 16), then both at once; the mixed total
  against the time-shared ideal (sum over models of images / solo throughput, over the window);
  and one resnet18 client's p50 alone and while 32 clients flood resnet152 (issue 12: <= 3x).
slow-clients: resnet18 throughput at concurrency 8, alone and beside 200 connections that are idle,
  send their headers a byte a second, or trickle a body a byte a second; and the server's RSS.
soak: both models at saturation with single, multipart, 12 MP and corrupt uploads; every status
  counted, the server's RSS, threads and open files sampled each second, the RSS curve as a PNG.
faults: a model file replaced on disk while serving (same answers), SIGTERM under 32 closed-loop clients (each
  answered or refused cleanly), kill -9 under load, then a restart (ready, serving).

Flags after `--` go to resnet-serve. Everything runs on this machine: the load generators compete
with the service for its cores, and so does anything else running (say so next to the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from bench import payloads as payload_files
from bench import servers
from bench.faults import faults
from bench.soak import rss_mb, soak, threads_fds

FLOOD = 32  # clients flooding resnet152 while one resnet18 client is timed (issue 12)


def _load(url, model, files, concurrency, warmup_s, duration_s, pid) -> dict:
    return servers.run_load(url, f"/classify?model={model}", files, concurrency, warmup_s, duration_s, pid)


def _together(*runs) -> list[dict]:
    """Run several load generators at the same time; their results in order."""
    results: list = [None] * len(runs)
    threads = [threading.Thread(target=lambda i=i, r=r: results.__setitem__(i, _load(*r))) for i, r in enumerate(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def two_models(server, files, args) -> dict:
    url, pid, w, d = server.url, server.pid, args.warmup_s, args.duration_s
    solo = {m: _load(url, m, files, 16, w, d, pid) for m in ("resnet18", "resnet152")}
    mixed = _together((url, "resnet18", files, 16, w, d, pid), (url, "resnet152", files, 16, w, d, pid))
    window = max(r["window_s"] for r in mixed)
    busy = sum(r["requests"] / solo[m]["images_per_s"] for r, m in zip(mixed, ("resnet18", "resnet152")))
    alone = _load(url, "resnet18", files, 1, w, d, pid)
    # The flood starts first and outlasts the timed client: the single client only sees a busy resnet152.
    flooded = _together((url, "resnet152", files, FLOOD, w + 2, d + 2, pid), (url, "resnet18", files, 1, w + 1, d, pid))
    return {
        "solo_images_per_s": {m: r["images_per_s"] for m, r in solo.items()},
        "mixed_images_per_s": {m: r["images_per_s"] for m, r in zip(("resnet18", "resnet152"), mixed)},
        "mixed_vs_time_shared_ideal": busy / window,  # >= 0.9 wanted
        "resnet18_p50_ms_alone": alone["p50_ms"],
        "resnet18_p50_ms_under_flood": flooded[1]["p50_ms"],
        "flood_slowdown": flooded[1]["p50_ms"] / alone["p50_ms"],  # <= 3 wanted
        "errors": {"solo": [r["errors"] for r in solo.values()], "mixed": [r["errors"] for r in mixed],
                   "flooded": [r["errors"] for r in flooded]},
    }  # fmt: skip


class SlowClients:
    """`count` connections split between idle, slow headers and a trickled body, each reopened when
    the server cuts it off, sending one byte a second while open."""

    def __init__(self, url: str, count: int) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.address, self.count, self.stop = (host, int(port)), count, threading.Event()
        self.cut = 0  # connections the server closed
        self.threads = [threading.Thread(target=self._run, args=(i % 3,), daemon=True) for i in range(count)]

    def _run(self, kind: int) -> None:
        body_head = b"POST /classify HTTP/1.1\r\nHost: b\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
        slow_head = b"POST /classify HTTP/1.1\r\nX-Slow: " + b"a" * 1000
        first, drip = [(b"", b""), (b"", slow_head), (body_head, bytes(100000))][kind]
        while not self.stop.is_set():
            try:
                with socket.create_connection(self.address, timeout=1) as sock:
                    sock.sendall(first)
                    for byte in drip or iter(int, 1):  # idle: forever, until the server closes
                        if self.stop.is_set():
                            return
                        try:
                            if sock.recv(4096) == b"":
                                break
                        except TimeoutError:
                            pass
                        if drip:
                            sock.sendall(bytes([byte]))
            except OSError:
                pass
            self.cut += 1

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()


def slow_clients(server, files, args) -> dict:
    url, pid, w, d = server.url, server.pid, args.warmup_s, args.duration_s
    before = _load(url, "resnet18", files, 8, w, d, pid)
    rss_before = rss_mb(pid)
    with SlowClients(url, 200) as slow:
        time.sleep(2)
        during = _load(url, "resnet18", files, 8, w, d, pid)
        rss_during, (threads, fds) = rss_mb(pid), threads_fds(pid)
    return {
        "images_per_s_without": before["images_per_s"], "images_per_s_with_200_slow": during["images_per_s"],
        "ratio": during["images_per_s"] / before["images_per_s"],  # >= 0.9 wanted
        "slow_connections_cut": slow.cut, "rss_mb_before": rss_before, "rss_mb_during": rss_during,
        "server_threads_during": threads, "server_fds_during": fds, "errors": [before["errors"], during["errors"]],
    }  # fmt: skip


SCENARIOS = {"two-models": two_models, "slow-clients": slow_clients, "soak": soak, "faults": faults}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    serve_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(prog="resnet-bench scenario", description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--models", type=Path, required=True, help="folder with resnet18/ and resnet152/")
    parser.add_argument("--out", type=Path, default=Path("results/scenarios"))
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=24, help="soak: concurrent clients over both models")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.serve_args = serve_args
    args.out.mkdir(parents=True, exist_ok=True)
    files = payload_files.build(args.out / "payloads", ("photo",))["photo"]
    with servers.start_service(args.models, "resnet18", tuple(serve_args), args.out) as server:
        started = time.time()
        result = SCENARIOS[args.scenario](server, files, args)
    result = {"scenario": args.scenario, "serve_args": serve_args, "load_average_1m": os.getloadavg()[0],
              "started": started, "command": " ".join(["resnet-bench scenario", *argv]), **result}  # fmt: skip
    name = args.scenario + ("-" + "-".join(a.lstrip("-") for a in serve_args) if serve_args else "")
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
