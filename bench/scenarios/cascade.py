"""The cascade scenario: model=auto against its ladder's shallowest and deepest rungs, on labelled images.

    resnet-bench scenario cascade --models models --data synthetic --out results/cascade
    resnet-bench scenario cascade --models models --data /data/imagenet --budget-ms 1000 --concurrency 1,16,64

Starts resnet-serve on --models (flags after `--` go to it), then runs closed-loop load at each
concurrency for four targets: the shallowest rung alone, the deepest alone, `auto`, and `auto` with
`budget_ms`. Unlike bench.load it reads every answer, so besides img/s and p50/p99 it reports top-1,
the escalation rate and the share answered at each depth, plus every non-200 status (503, 504).
Writes cascade.json and cascade.md to --out. Measure on an idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

import cliconfig
from artifact import write_atomically
from bench import servers
from bench.config import BenchError, check_headers, redacted
from bench.load import Connection
from service.depth.calibrate import folder_images, synthetic_images


async def closed_loop(url: str, path: str, payloads, labels, concurrency: int, warmup_s: float, duration_s: float,
                      headers: tuple[str, ...] = ()):
    """`concurrency` connections posting the labelled images in turn; every answer in the window counts."""
    extra = "".join(f"{header}\r\n" for header in headers)
    target = urlsplit(url)
    loop = asyncio.get_running_loop()
    window_start = loop.time() + warmup_s
    window_end = window_start + duration_s
    answers, next_image = [], iter(range(10**9))

    async def worker() -> None:
        connection = Connection(target.hostname, target.port)
        try:
            while (sent := loop.time()) < window_end:
                i = next(next_image) % len(payloads)
                try:
                    status, body = await connection.request("POST", path, payloads[i], "image/png", extra)
                except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                    await connection.close()
                    status, body = type(error).__name__, b""
                done = loop.time()
                if window_start <= done <= window_end:
                    answers.append((status, (done - sent) * 1000, body, int(labels[i])))
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


def summarise(answers, duration_s: float, depths: dict[str, int]) -> dict:
    """img/s, p50/p99, top-1, escalation rate, share per depth and errors of one run's answers."""
    ok = [(ms, json.loads(body), label) for status, ms, body, label in answers if status == 200]
    errors: dict[str, int] = {}
    for status, *_ in answers:
        if status != 200:
            errors[str(status)] = errors.get(str(status), 0) + 1
    latencies = np.asarray([ms for ms, _, _ in ok]) if ok else np.zeros(0)
    models = [body["model"] for _, body, _ in ok]
    correct = [body["predictions"][0]["class_index"] == label for _, body, label in ok]
    escalated = [len(body.get("cascade", {}).get("path", [])) > 1 for _, body, _ in ok]
    skipped = [body.get("cascade", {}).get("escalation_skipped") is not None for _, body, _ in ok]
    count = max(1, len(ok))
    return {
        "answered": len(ok),
        "errors": errors,
        "images_per_s": round(len(ok) / duration_s, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1) if ok else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 1) if ok else None,
        "top1": round(100 * sum(correct) / count, 2),
        "escalation_rate": round(sum(escalated) / count, 4),
        "skipped_rate": round(sum(skipped) / count, 4),
        "share_per_depth": {str(depths[m]): round(models.count(m) / count, 4) for m in sorted(set(models))},
    }


def table(rows: list[dict]) -> str:
    lines = ["| target | concurrency | img/s | p50 ms | p99 ms | top-1 % | escalated | skipped | share per depth "
             "| errors |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        shares = ", ".join(f"{d}: {100 * s:.1f}%" for d, s in r["share_per_depth"].items())
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "none"
        lines.append(f"| {r['target']} | {r['concurrency']} | {r['images_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                     f"{r['top1']} | {100 * r['escalation_rate']:.1f}% | {100 * r['skipped_rate']:.1f}% | {shares} | "
                     f"{errors} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """resnet-bench scenario cascade: start the service, run the scenario, write cascade.json and cascade.md."""
    argv = sys.argv[1:] if argv is None else argv
    own, serve_args = (argv[: argv.index("--")], tuple(argv[argv.index("--") + 1 :])) if "--" in argv else (argv, ())
    parser = argparse.ArgumentParser(prog="resnet-bench scenario cascade", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--data", default="synthetic", help="'synthetic' or an ImageNet-style folder (its val/)")
    parser.add_argument("--images", type=int, default=2000, help="labelled images posted in turn")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--budget-ms", type=float, default=1000.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("results/cascade"))
    parser.add_argument("--header", action="append", default=[], dest="headers", metavar="'NAME: VALUE'",
                        help="an HTTP header on every request, e.g. an API key (repeatable)")
    args = parser.parse_args(own)
    args.headers = tuple(args.headers)
    try:
        check_headers(args.headers)
    except BenchError as error:
        return cliconfig.fail("resnet-bench scenario cascade", error)
    args.out.mkdir(parents=True, exist_ok=True)
    service = servers.start_service(args.models, "", serve_args, args.out, args.headers)

    def get(path: str) -> dict:
        request = urllib.request.Request(service.url + path, headers=service.header_dict)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)

    try:
        listing = get("/models")
        rungs = [r["name"] for r in listing["ladder"]]
        depths = {r["name"]: r["depth"] for r in listing["ladder"]}
        card_ids = [c["class_id"] for c in get(f"/models/{rungs[0]}")["classes"]]
        if args.data == "synthetic":
            size = next(m["resize_size"] for m in listing["models"] if m["name"] == rungs[0])
            payloads, labels = synthetic_images(args.images, size, tuple(card_ids), seed=1)
        else:
            payloads, labels = folder_images(Path(args.data), args.images, tuple(card_ids), seed=1)
        targets = {
            f"{rungs[0]} alone": f"/classify?model={rungs[0]}",
            f"{rungs[-1]} alone": f"/classify?model={rungs[-1]}",
            "auto": "/classify?model=auto",
            f"auto, budget_ms={args.budget_ms:g}": f"/classify?model=auto&budget_ms={args.budget_ms:g}",
        }
        rows = []
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            for name, path in targets.items():
                started = time.monotonic()
                answers = asyncio.run(closed_loop(service.url, path, payloads, labels, concurrency,
                                                  args.warmup_s, args.duration_s, args.headers))  # fmt: skip
                rows.append({"target": name, "concurrency": concurrency,
                             **summarise(answers, args.duration_s, depths)})  # fmt: skip
                print(f"resnet-bench scenario cascade: {name} at {concurrency} ({time.monotonic() - started:.0f} s)",
                      file=sys.stderr)
    finally:
        service.stop()
    result = {"command": "resnet-bench scenario cascade " + " ".join(redacted(argv)), "auto": listing["auto"],
              "ladder": listing["ladder"], "rows": rows}  # fmt: skip
    write_atomically(args.out / "cascade.json", lambda f: f.write(json.dumps(result, indent=1).encode()))
    text = table(rows)
    write_atomically(args.out / "cascade.md", lambda f: f.write(text.encode() + b"\n"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
