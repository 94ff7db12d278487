"""The Open Inference Protocol's cost against /classify: the same images, the same model, one server.

The target (TARGET; results in docs/oip.md): through /v2/models/{name}/infer (binary framing, image
bytes in, top-5 classification out) the service keeps at least 95% of /classify's throughput at
concurrency 16, for resnet18 fp32 at 224 px (a deep model would hide the overhead). Rounds alternate the two
protocols against one resnet-serve process, so drift in the machine's load hits both alike; the
table gives each protocol's mean and range over the rounds and the ratio of the means.

    python -m bench.studies.oip_compare --out results/oip     # builds the bench's resnet18 fp32 224 px model
    python -m bench.studies.oip_compare --models results/oip-models --rounds 3 --duration-s 10 -- --providers cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from artifact import write_atomically
from bench import oip, payloads, servers

TARGET = 0.95  # OIP throughput / /classify throughput, at least
MODEL = "resnet18"


def run(models: Path, out: Path, concurrency: int, rounds: int, warmup_s: float, duration_s: float,
        serve_args: tuple[str, ...] = ()) -> dict:
    """Alternating rounds of /classify and OIP load; the per-run results and the summary."""
    files = payloads.build(out / "payloads", ("photo",))["photo"]
    paths = {"classify": f"/classify?model={MODEL}", "oip": oip.path(MODEL)}
    runs = []
    load_start = os.getloadavg()
    with servers.start_service(models, MODEL, serve_args, out / "logs") as server:
        for round_ in range(rounds):
            order = ("classify", "oip") if round_ % 2 == 0 else ("oip", "classify")
            for protocol in order:
                result = servers.run_load(server.url, paths[protocol], files, concurrency, warmup_s, duration_s,
                                          server.pid, protocol=protocol)
                result.pop("latencies_ms")
                runs.append({"protocol": protocol, "round": round_, **result})
                print(f"round {round_} {protocol}: {result['images_per_s']:.1f} img/s, p50 {result['p50_ms']} ms, "
                      f"errors {result['errors']}", file=sys.stderr, flush=True)
    summary = {}
    for protocol in paths:
        rates = [r["images_per_s"] for r in runs if r["protocol"] == protocol]
        p50s = [r["p50_ms"] for r in runs if r["protocol"] == protocol]
        summary[protocol] = {"mean_images_per_s": round(statistics.mean(rates), 2), "min": min(rates),
                             "max": max(rates), "mean_p50_ms": round(statistics.mean(p50s), 2)}
    ratio = summary["oip"]["mean_images_per_s"] / summary["classify"]["mean_images_per_s"]
    return {
        "command": " ".join(["python -m bench.studies.oip_compare", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "model": MODEL, "concurrency": concurrency, "serve_args": list(serve_args), "cpus": os.cpu_count(), "runs": runs, "summary": summary,
        "oip_over_classify": round(ratio, 3), "target": TARGET, "holds": ratio >= TARGET,
    }  # fmt: skip


def table(results: dict) -> str:
    """The summary as a markdown table."""
    lines = ["| route | img/s, mean (min-max) | p50 ms, mean |", "|---|---|---|"]
    for protocol, s in results["summary"].items():
        lines.append(f"| {protocol} | {s['mean_images_per_s']:.1f} ({s['min']:.1f}-{s['max']:.1f}) | {s['mean_p50_ms']:.1f} |")
    lines.append(f"\nOIP / classify: {results['oip_over_classify']:.3f} (target >= {TARGET}); "
                 f"1-minute load {results['load_average_start'][0]:.1f} at the start, {results['load_average_end'][0]:.1f} at the end")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.oip_compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, help="folder with resnet18/model.onnx (default: build OUT/models)")
    parser.add_argument("--out", type=Path, default=Path("results/oip"))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each measures both protocols (default 3)")
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--duration-s", type=float, default=10.0)
    argv = sys.argv[1:] if argv is None else argv
    serve_args = argv[argv.index("--") + 1 :] if "--" in argv else []  # after `--`: resnet-serve's flags
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    models = args.models
    if models is None:
        from bench import models as bench_models  # torch and the exporter: only when building

        models = args.out / "models"
        bench_models.build(models, archs=(MODEL,), precisions=("fp32",))
    results = run(models, args.out, args.concurrency, args.rounds, args.warmup_s, args.duration_s, tuple(serve_args))
    write_atomically(args.out / "results.json", lambda f: f.write((json.dumps(results, indent=2) + "\n").encode()))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
