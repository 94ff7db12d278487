"""The soak scenario of resnet-bench (bench/scenarios/cli.py): both models at saturation for a long
while, every answer counted, the server's memory, threads and open files sampled each second."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from pathlib import Path

from bench import payloads as payload_files


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def threads_fds(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


async def _soak_load(url: str, bodies: list[tuple[str, dict]], clients: int, duration_s: float,
                     headers: dict[str, str]) -> dict[str, int]:
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
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, headers=headers) as http:
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
            samples.append((time.monotonic() - started, rss_mb(server.pid), *threads_fds(server.pid)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        counts = asyncio.run(_soak_load(server.url, bodies, args.clients, args.duration_s, server.header_dict))
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
