"""resnet-bench's named robustness scenarios, each against a fresh resnet-serve: results as JSON.

    resnet-bench scenario two-models --models models --out results/scenarios
    resnet-bench scenario two-models --models models -- --intra-op-threads 2   # flags for resnet-serve
    resnet-bench scenario slow-clients --models models
    resnet-bench scenario soak --models models --duration-s 600 --clients 24
    resnet-bench scenario faults --models models     # replaces resnet18/model.onnx for a moment
    resnet-bench scenario cascade --models models --data synthetic   # its own flags: bench/scenarios/cascade.py

two-models: each model's solo throughput (concurrency 16), then both at once; the mixed total
  against the time-shared ideal (sum over models of images / solo throughput, over the window);
  and one resnet18 client's p50 alone and while 32 clients flood resnet152 (<= 3x wanted).
slow-clients: resnet18 throughput at concurrency 8, alone and beside 200 connections that are idle,
  send their headers a byte a second, or trickle a body a byte a second; and the server's RSS.
soak: both models at saturation with single, multipart, 12 MP and corrupt uploads; every status
  counted, the server's RSS, threads and open files sampled each second, the RSS curve as a PNG.
faults: a model file replaced on disk while serving (same answers), SIGTERM under 32 closed-loop clients (each
  answered or refused cleanly), kill -9 under load, then a restart (ready, serving).
cascade: model=auto against its ladder's shallowest and deepest rungs, on labelled images.

Flags after `--` go to resnet-serve. Everything runs on this machine: the load generators compete
with the service for its cores, and so does anything else running (say so next to the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cliconfig
from artifact import write_atomically
from bench import payloads as payload_files
from bench import servers
from bench.config import BenchError, check_headers, redacted
from bench.scenarios import cascade
from bench.scenarios.contention import slow_clients, two_models
from bench.scenarios.faults import faults
from bench.scenarios.soak import soak

SCENARIOS = {"two-models": two_models, "slow-clients": slow_clients, "soak": soak, "faults": faults}


def main(argv: list[str] | None = None) -> int:
    """resnet-bench scenario NAME ...: one scenario, its result written to --out as NAME.json."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cascade"]:  # labelled images and its own flags, so its own command line
        return cascade.main(argv[1:])
    serve_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(prog="resnet-bench scenario", description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=sorted([*SCENARIOS, "cascade"]))
    parser.add_argument("--models", type=Path, required=True, help="folder with resnet18/ and resnet152/")
    parser.add_argument("--out", type=Path, default=Path("results/scenarios"))
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=24, help="soak: concurrent clients over both models")
    parser.add_argument("--header", action="append", default=[], dest="headers", metavar="'NAME: VALUE'",
                        help="an HTTP header on every request the load sends, e.g. an API key (repeatable)")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.serve_args, args.headers = serve_args, tuple(args.headers)
    try:
        check_headers(args.headers)
    except BenchError as error:
        return cliconfig.fail("resnet-bench scenario", error)
    args.out.mkdir(parents=True, exist_ok=True)
    files = payload_files.build(args.out / "payloads", ("photo",))["photo"]
    with servers.start_service(args.models, "resnet18", tuple(serve_args), args.out, args.headers) as server:
        started = time.time()
        result = SCENARIOS[args.scenario](server, files, args)
    result = {"scenario": args.scenario, "serve_args": serve_args, "load_average_1m": os.getloadavg()[0],
              "started": started, "command": " ".join(["resnet-bench scenario", *redacted(argv)]), **result}  # fmt: skip
    name = args.scenario + ("-" + "-".join(a.lstrip("-") for a in serve_args) if serve_args else "")
    write_atomically(args.out / f"{name}.json", lambda f: f.write(json.dumps(result, indent=2).encode()))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
