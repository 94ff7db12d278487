"""The two-models and slow-clients scenarios of resnet-bench (bench/scenarios/cli.py): the service
beside other load, another model's flood or connections that hold it up."""

from __future__ import annotations

import socket
import threading
import time

from bench import servers
from bench.scenarios.soak import rss_mb, threads_fds

FLOOD = 32  # clients flooding resnet152 while one resnet18 client is timed


def _load(server, model, files, concurrency, warmup_s, duration_s) -> dict:
    return servers.run_load(server.url, f"/classify?model={model}", files, concurrency, warmup_s, duration_s,
                            server.pid, headers=server.headers)


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
    """Each model solo, then both at once; one resnet18 client alone and under a resnet152 flood."""
    w, d = args.warmup_s, args.duration_s
    solo = {m: _load(server, m, files, 16, w, d) for m in ("resnet18", "resnet152")}
    mixed = _together((server, "resnet18", files, 16, w, d), (server, "resnet152", files, 16, w, d))
    window = max(r["window_s"] for r in mixed)
    busy = sum(r["requests"] / solo[m]["images_per_s"] for r, m in zip(mixed, ("resnet18", "resnet152")))
    alone = _load(server, "resnet18", files, 1, w, d)
    # The flood starts first and outlasts the timed client: the single client only sees a busy resnet152.
    flooded = _together((server, "resnet152", files, FLOOD, w + 2, d + 2), (server, "resnet18", files, 1, w + 1, d))
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
    """resnet18 throughput alone and beside 200 slow connections; the server's RSS, threads and files."""
    w, d = args.warmup_s, args.duration_s
    before = _load(server, "resnet18", files, 8, w, d)
    rss_before = rss_mb(server.pid)
    with SlowClients(server.url, 200) as slow:
        time.sleep(2)
        during = _load(server, "resnet18", files, 8, w, d)
        rss_during, (threads, fds) = rss_mb(server.pid), threads_fds(server.pid)
    return {
        "images_per_s_without": before["images_per_s"], "images_per_s_with_200_slow": during["images_per_s"],
        "ratio": during["images_per_s"] / before["images_per_s"],  # >= 0.9 wanted
        "slow_connections_cut": slow.cut, "rss_mb_before": rss_before, "rss_mb_during": rss_during,
        "server_threads_during": threads, "server_fds_during": fds, "errors": [before["errors"], during["errors"]],
    }  # fmt: skip
