"""Several resnet-serve processes on one machine (one GPU): does throughput grow with processes?

    python -m bench.studies.replicas --models DIR --model resnet18-fp16 --replicas 1,2,4,8 --out results/replicas

One resnet-serve process answers HTTP on one event loop, which holds Python's GIL: on a GPU that loop,
not the GPU, sets the ceiling (docs/gpu.md). For each N this starts N independent processes on the
same models (each its own port, sessions and batcher, all on the same GPU) and drives each with its
own load generator at concurrency/N, all at once, then adds up their answers. This is what N
replicas behind a load balancer, or time-sliced pods on one GPU, would serve. Writes results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from artifact import ModelCard, write_atomically
from bench import oip, payloads, servers
from service.engine.tensors import ORT_DTYPES


def measure(models: Path, model: str, replicas: int, concurrency: int, payload: str, serve_args: list[str],
            out: Path, warmup_s: float, duration_s: float) -> dict:
    """N processes, each driven at concurrency // N at once: their images per second added up."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(models / model / "model.onnx"), providers=["CPUExecutionProvider"])
    card = ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)
    dtype = ORT_DTYPES[session.get_inputs()[0].type]
    jpegs = payloads.build(out / "payloads", (payloads.PIXELS_FROM,))[payloads.PIXELS_FROM]
    files = payloads.pixels(out / "payloads", jpegs, model, card.preprocessing, dtype, 50_000_000,
                            payloads.PIXELS_PER_REQUEST[payload])  # fmt: skip
    each = max(1, concurrency // replicas)
    served = servers.served_subset(out / "served", [models / model / "model.onnx"])  # this model alone
    started = time.perf_counter()
    with ThreadPoolExecutor(replicas) as pool:  # the processes start (and warm up) at once
        processes = list(pool.map(lambda i: servers.start_service(served, model, tuple(serve_args),
                                                                  out / "logs" / f"{replicas}-{i}"), range(replicas)))
    try:
        start_s = time.perf_counter() - started
        with ThreadPoolExecutor(replicas) as pool:
            runs = list(pool.map(lambda p: servers.run_load(
                p.url, oip.path(model), files, each, warmup_s, duration_s, p.pid,
                protocol="oip-pixels", input_name=card.input_name), processes))  # fmt: skip
    finally:
        for process in processes:
            process.stop()
    return {
        "replicas": replicas, "concurrency_each": each, "start_s": round(start_s, 1),
        "images_per_s": round(sum(r["images_per_s"] for r in runs), 1),
        "per_replica": [{k: r[k] for k in ("images_per_s", "p50_ms", "p99_ms", "server_cpu_cores", "errors")}
                        for r in runs],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.replicas", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="folder written by resnet-export")
    parser.add_argument("--model", required=True, help="the served model to measure")
    parser.add_argument("--replicas", default="1,2,4", help="process counts, comma-separated (default 1,2,4)")
    parser.add_argument("--concurrency", type=int, default=128, help="connections in all, split evenly (default 128)")
    parser.add_argument("--payload", choices=tuple(payloads.PIXELS_PER_REQUEST), default="pixels")
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--duration-s", type=float, default=3.0)
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, payloads and logs")
    parser.add_argument("serve_args", nargs="*", help="flags for every resnet-serve, after --")
    args = parser.parse_args(argv)
    if not (args.models / args.model / "model.onnx").is_file():
        print(f"replicas: no {args.model}/model.onnx in {str(args.models)!r}", file=sys.stderr)
        return 2
    try:
        counts = [int(n) for n in args.replicas.split(",")]
    except ValueError:
        print(f"replicas: --replicas must be comma-separated integers, got {args.replicas!r}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in counts:
        rows.append(measure(args.models, args.model, n, args.concurrency, args.payload, args.serve_args, args.out,
                            args.warmup_s, args.duration_s))  # fmt: skip
        each = ", ".join(f"{r['images_per_s']:.0f}" for r in rows[-1]["per_replica"])
        print(f"replicas {n}: {rows[-1]['images_per_s']:.0f} img/s ({each})", file=sys.stderr, flush=True)
        result = {"model": args.model, "payload": args.payload, "concurrency": args.concurrency, "rows": rows,
                  "command": "python -m bench.studies.replicas " + " ".join(argv if argv is not None else sys.argv[1:])}
        write_atomically(args.out / "results.json", lambda f: f.write(json.dumps(result, indent=1).encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
