"""Named robustness scenarios of issue 12, each against a fresh resnet-serve: results as JSON.

    resnet-bench-scenario two-models --models results/models --out results/scenarios
    python -m bench.scenarios two-models --models results/models --duration-s 10 -- --intra-op-threads 2
    python -m bench.scenarios slow-clients --models results/models
    python -m bench.scenarios soak --models results/models --duration-s 600

two-models: each model's solo throughput (concurrency 16), then both at once; the mixed total
  against the time-shared ideal (sum over models of images / solo throughput, over the window);
  and one resnet18 client's p50 alone and while 32 clients flood resnet152 (issue 12: <= 3x).
slow-clients: resnet18 throughput at concurrency 8, alone and beside 200 connections that are idle,
  send their headers a byte a second, or trickle a body a byte a second; and the server's RSS.
soak: both models at saturation with single, multipart and corrupt uploads; every status counted,
  the server's RSS, threads and open files sampled each second, and the RSS curve as a PNG.

Flags after `--` go to resnet-serve. Everything runs on this machine: the load generators compete
with the service for its cores, and so does anything else running (say so next to the numbers).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from bench import payloads as payload_files
from bench import servers

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


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _threads_fds(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


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
    rss_before = _rss_mb(pid)
    with SlowClients(url, 200) as slow:
        time.sleep(2)
        during = _load(url, "resnet18", files, 8, w, d, pid)
        rss_during, (threads, fds) = _rss_mb(pid), _threads_fds(pid)
    return {
        "images_per_s_without": before["images_per_s"], "images_per_s_with_200_slow": during["images_per_s"],
        "ratio": during["images_per_s"] / before["images_per_s"],  # >= 0.9 wanted
        "slow_connections_cut": slow.cut, "rss_mb_before": rss_before, "rss_mb_during": rss_during,
        "server_threads_during": threads, "server_fds_during": fds, "errors": [before["errors"], during["errors"]],
    }  # fmt: skip


async def _soak_load(url: str, bodies: list[tuple[str, dict]], clients: int, duration_s: float) -> dict[str, int]:
    """`clients` closed-loop connections posting `bodies` in turn to both models; status -> count."""
    import httpx

    counts: dict[str, int] = {}
    stop = time.monotonic() + duration_s

    async def client(index: int, http: httpx.AsyncClient) -> None:
        for turn in itertools.count(index):
            if time.monotonic() > stop:
                return
            model, (kind, request) = ("resnet18", "resnet152")[turn % 2], bodies[turn % len(bodies)]
            try:
                status = str((await http.post(f"/classify?model={model}", **request)).status_code)
            except httpx.HTTPError as error:
                status = type(error).__name__
            counts[f"{kind} {status}"] = counts.get(f"{kind} {status}", 0) + 1

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    return counts


def soak(server, files, args) -> dict:
    """Both models at saturation: single and multipart uploads, large photos, 3% corrupt files."""
    photos = [Path(f).read_bytes() for f in files]
    large = [Path(f).read_bytes() for f in payload_files.build(args.out / "payloads", ("12mp",))["12mp"]]
    jpeg = {"headers": {"Content-Type": "image/jpeg"}}
    bodies = [("single", {"content": p, **jpeg}) for p in photos] * 10 + [("large", {"content": large[0], **jpeg})]
    bodies += [("multipart", {"files": [("images", (f"{i}.jpg", p, "image/jpeg")) for i, p in enumerate(photos)]})] * 10
    bodies += [("corrupt", {"content": photos[0][: len(photos[0]) // 3], **jpeg})]  # 1 in 32: about 3%
    samples: list[tuple[float, float, int, int]] = []
    done = threading.Event()

    def sample() -> None:
        started = time.monotonic()
        while not done.wait(1.0):
            samples.append((time.monotonic() - started, _rss_mb(server.pid), *_threads_fds(server.pid)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        counts = asyncio.run(_soak_load(server.url, bodies, args.clients, args.duration_s))
    finally:
        done.set()
        sampler.join()
    warm = [s for s in samples if s[0] >= min(60.0, args.duration_s / 5)]  # after warm-up
    rss = [s[1] for s in warm]
    _plot(samples, args.out / "soak-memory.png")
    return {
        "clients": args.clients, "duration_s": args.duration_s, "answers": counts,
        "server_errors_5xx": sum(n for k, n in counts.items() if k.split()[1].startswith("5")),
        "unanswered": sum(n for k, n in counts.items() if not k.split()[1].isdigit()),
        "rss_mb_after_warm_up": {"first": rss[0], "last": rss[-1], "min": min(rss), "max": max(rss)} if rss else None,
        "rss_spread_after_warm_up": (max(rss) - min(rss)) / min(rss) if rss else None,  # <= 0.10 wanted
        "threads_first_last": [warm[0][2], warm[-1][2]] if warm else None,
        "fds_first_last": [warm[0][3], warm[-1][3]] if warm else None,
        "samples": samples,
    }  # fmt: skip


def _plot(samples, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.2))
    axis.plot([s[0] for s in samples], [s[1] for s in samples])
    axis.set_xlabel("seconds")
    axis.set_ylabel("resnet-serve RSS (MB)")
    axis.set_ylim(bottom=0)
    axis.set_title("soak: both models at saturation")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _post_all(url: str, data: bytes, count: int) -> list[str]:
    """`count` concurrent uploads to resnet18; each one's status, or the exception's name."""
    import httpx

    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=count)) as http:
            async def one() -> str:
                try:
                    response = await http.post("/classify", content=data, headers={"Content-Type": "image/jpeg"})
                    return str(response.status_code)
                except httpx.HTTPError as error:
                    return type(error).__name__
            return list(await asyncio.gather(*(one() for _ in range(count))))

    return asyncio.run(run())


def faults(server, files, args) -> dict:
    """kill -9 under load then a restart; a model file replaced while serving; SIGTERM under load."""
    import shutil
    import signal

    import httpx

    data = Path(files[0]).read_bytes()
    result: dict = {}
    # 1. A model file replaced on disk while serving changes no answer (the session holds the graph).
    before = httpx.post(server.url + "/classify", content=data, headers={"Content-Type": "image/jpeg"}).json()
    target = args.models / "resnet18" / "model.onnx"
    saved = target.with_name("model.onnx.saved")
    shutil.copy2(target, saved)
    try:
        shutil.copy2(args.models / "resnet152" / "model.onnx", target.with_name("model.onnx.tmp"))
        os.replace(target.with_name("model.onnx.tmp"), target)
        after = httpx.post(server.url + "/classify", content=data, headers={"Content-Type": "image/jpeg"}).json()
    finally:
        os.replace(saved, target)
    result["replaced_file_same_answer"] = before == after
    # 2. SIGTERM under load: every admitted request is answered (200), the rest refused cleanly.
    statuses: list[str] = []
    loader = threading.Thread(target=lambda: statuses.extend(_post_all(server.url, data, 32)))
    loader.start()
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    loader.join()
    result["sigterm_under_32_clients"] = {s: statuses.count(s) for s in sorted(set(statuses))}
    server.process.wait(timeout=60)
    # 3. kill -9 under load, then a restart: ready again and serving.
    with servers.start_service(args.models, "resnet18", tuple(args.serve_args), args.out) as second:
        loader = threading.Thread(target=lambda: _post_all(second.url, data, 32))
        loader.start()
        time.sleep(0.5)
        second.process.kill()
        loader.join()
    started = time.monotonic()
    with servers.start_service(args.models, "resnet18", tuple(args.serve_args), args.out) as third:
        result["restart_to_ready_s"] = time.monotonic() - started
        result["after_restart"] = _post_all(third.url, data, 4)
    return result


SCENARIOS = {"two-models": two_models, "slow-clients": slow_clients, "soak": soak, "faults": faults}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    serve_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(prog="python -m bench.scenarios", description=__doc__.split("\n")[0])
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
              "started": started, "command": " ".join(["python -m bench.scenarios", *argv]), **result}  # fmt: skip
    name = args.scenario + ("-" + "-".join(a.lstrip("-") for a in serve_args) if serve_args else "")
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
