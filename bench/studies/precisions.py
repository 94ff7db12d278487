"""Export cost and ONNX Runtime CPU throughput of fp32, fp16 and int8, measured side by side.

    python -m bench.studies.precisions CHECKPOINT [CHECKPOINT ...] --out results/export-bench
    python -m bench.studies.precisions results/models/checkpoints/resnet18.pt --batches 1,8 --rounds 5

For each checkpoint it runs resnet-export three times (fp32, fp16, int8) into OUT, timing each
export end to end (trace, verification, calibration, write) and recording the file size. Then it
loads every model into a CPU session with the service's session options (service.engine.runtime.session_options:
the same threads, optimisation level and no spinning, so the figures compare with resnet-serve's) and measures images/s at each batch size in interleaved rounds
(each round gives every model `--seconds` of back-to-back calls), reporting the median round, so a
neighbour's burst of CPU use hits all models alike instead of whichever ran last. Results go to
stdout as a table and to OUT/benchmark.json with the command and the machine.

On this project's CPU, ONNX Runtime runs the fp16 graph in float32 (export/fp16.py says why), so fp16
shows the cost of its Cast nodes here; its speed-up belongs to the CUDA provider.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import onnxruntime as ort

import cliconfig
from artifact import PRECISIONS, ModelCard, git_commit, write_atomically
from bench.machine import cpu_name
from service.config import ServeConfig
from artifact import preprocess
from service.engine.runtime import session_options


@dataclass(frozen=True)
class PrecisionBenchConfig:
    """What to export and how long to measure."""

    checkpoints: tuple[Path, ...]  # resnet-train checkpoints, each exported in every precision
    out: Path = Path("results/export-bench")  # models folder for the exports and benchmark.json
    batches: tuple[int, ...] = (1, 8)  # batch sizes measured: one request alone, and a served batch
    rounds: int = 5  # interleaved measuring rounds; the median is reported
    seconds: float = 2.0  # wall time per model, batch size and round
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = one per available CPU, as resnet-serve


@dataclass(frozen=True)
class Row:
    """One model at one batch size."""

    name: str  # served name, e.g. resnet18-int8
    precision: str  # fp32, fp16 or int8
    batch: int  # images per call
    images_per_s: float  # median over rounds
    spread: tuple[float, float]  # slowest and fastest round, images/s


def export_all(config: PrecisionBenchConfig) -> list[dict]:
    """Export every checkpoint in every precision; returns name, precision, seconds, bytes per model."""
    from export.exporter import export_checkpoint

    made = []
    for checkpoint in config.checkpoints:
        for precision in PRECISIONS:
            start = time.monotonic()
            path = export_checkpoint(checkpoint, config.out, precision=precision)
            seconds = time.monotonic() - start
            made.append({"name": path.parent.name, "precision": precision, "path": str(path),
                         "export_s": round(seconds, 1), "bytes": path.stat().st_size})
    return made


def _session(path: str, threads: int) -> ort.InferenceSession:
    serving = ServeConfig(models=Path(path).parent.parent, providers=("cpu",), intra_op_threads=threads)
    return ort.InferenceSession(path, session_options(serving), providers=["CPUExecutionProvider"])


def measure(models: list[dict], config: PrecisionBenchConfig) -> list[Row]:
    """Interleaved rounds over every (model, batch); the median round's images/s per pair."""
    sessions, inputs = {}, {}
    for model in models:
        sess = _session(model["path"], config.threads)
        card = ModelCard.from_metadata(sess.get_modelmeta().custom_metadata_map)
        for batch in config.batches:
            x = preprocess.random_batch(card.preprocessing, batch)  # the model's own input dtype and layout
            sess.run(None, {card.input_name: x})  # warm-up: first call allocates and picks kernels
            sessions[model["name"], batch] = (sess, card.input_name)
            inputs[model["name"], batch] = x
    speeds: dict[tuple[str, int], list[float]] = {key: [] for key in sessions}
    for round_ in range(config.rounds):
        for key, (sess, input_name) in sessions.items():
            feed, calls, start = {input_name: inputs[key]}, 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < config.seconds:
                sess.run(None, feed)
                calls += 1
            speeds[key].append(calls * key[1] / elapsed)
        print(f"round {round_ + 1}/{config.rounds} done", file=sys.stderr, flush=True)
    precision = {m["name"]: m["precision"] for m in models}
    return [Row(name, precision[name], batch, statistics.median(s), (min(s), max(s)))
            for (name, batch), s in speeds.items()]


def table(models: list[dict], rows: list[Row]) -> str:
    """Markdown: one line per model, export time, size, then images/s per batch size."""
    batches = sorted({r.batch for r in rows})
    speed = {(r.name, r.batch): r.images_per_s for r in rows}
    head = "| model | precision | export s | MB | " + " | ".join(f"img/s @ batch {b}" for b in batches) + " |"
    lines = [head, "|" + " --- |" * (4 + len(batches))]
    for m in models:
        cells = " | ".join(f"{speed[m['name'], b]:.1f}" for b in batches)
        lines.append(f"| {m['name']} | {m['precision']} | {m['export_s']} | {m['bytes'] / 1e6:.1f} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point: python -m bench.studies.precisions."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config = PrecisionBenchConfig(**cliconfig.Parser(
            PrecisionBenchConfig, prog="python -m bench.studies.precisions", description=__doc__.split("\n\n")[0],
            positional=("checkpoints",)).parse(argv))
    except cliconfig.UsageError as error:
        return cliconfig.fail("python -m bench.studies.precisions", error)
    load_before = os.getloadavg()
    models = export_all(config)
    rows = measure(models, config)
    print(table(models, rows))
    report = {
        "command": "python -m bench.studies.precisions " + " ".join(argv),
        "git_commit": git_commit(),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "onnxruntime": ort.__version__,
                    # other processes on the box skew every number alike; this says how busy it was
                    "load_average_before_after": [load_before, os.getloadavg()]},
        "config": {**asdict(config), "checkpoints": [str(c) for c in config.checkpoints], "out": str(config.out)},
        "models": models,
        "throughput": [asdict(r) for r in rows],
    }
    write_atomically(config.out / "benchmark.json", lambda f: f.write((json.dumps(report, indent=2) + "\n").encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
