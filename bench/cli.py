"""resnet-bench: resnet-serve's throughput and latency against raw ONNX Runtime and PyTorch eager.

    resnet-bench                                   # build 224x224 models into results/models, measure all
    resnet-bench --models models --out results/default-models
    resnet-bench --only resnet18 --concurrency 1,16 --duration-s 5 -- --max-batch-size 16
    resnet-bench --url http://127.0.0.1:8000 --models models   # a running service; raw ORT from --models
    resnet-bench --models models --only resnet18,resnet18-int8 --rounds 3   # service/raw ratio (bench/ratio.py)
    resnet-bench --models models --payloads pixels --rounds 3    # the same without the decode: the serving path
    resnet-bench --url http://127.0.0.1:8000 --models models --header 'X-API-Key: ...'   # on every request

In order: request payloads, decode timing, raw ONNX Runtime per model and batch size, then
resnet-serve (started here with the flags after `--`, or the one at --url) under closed-loop load at
each concurrency and payload, then the PyTorch eager baseline. Everything is written to --out as
results.json, table.md and results.png; progress goes to stderr. Measure on an idle machine: the
load generator and the service share its cores, and so would anything else running.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

import cliconfig
from artifact import git_commit, write_atomically
from bench import raw, ratio, report, servers
from bench import payloads as payload_files
from bench.config import BenchConfig, BenchError, parse, redacted
from bench.machine import cpu_name
from service import config as serve_config
from service.engine.runtime import ModelLoadError, discover, load_model, model_threads

# The bench records each model's providers in results.json; the per-session CUDA-fallback warning of
# service.engine.runtime would only repeat on stderr what the service's own log says once.
logging.getLogger("service.engine.runtime").setLevel(logging.ERROR)
BUSY_LOAD = 0.5  # 1-minute load average above which the numbers are not trustworthy on 2 cores


def say(message: str, started: float = time.monotonic()) -> None:
    print(f"resnet-bench [{time.monotonic() - started:6.0f} s] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the resnet-bench console script."""
    if (sys.argv[1:] if argv is None else argv)[:1] == ["scenario"]:  # the named robustness scenarios
        from bench.scenarios import cli as scenarios

        return scenarios.main((sys.argv[1:] if argv is None else argv)[1:])
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = parse(argv)
        results = run(config, " ".join(["resnet-bench", *map(shlex.quote, redacted(argv))]))
    except (BenchError, serve_config.ConfigError, ModelLoadError) as error:
        return cliconfig.fail("resnet-bench", error)
    except KeyboardInterrupt:
        print("resnet-bench: interrupted", file=sys.stderr)
        return 130
    print(Path(results["meta"]["out"], "ratio.md" if config.rounds else "table.md").read_text())
    return 0


def run(config: BenchConfig, command: str = "resnet-bench") -> dict:
    """The whole benchmark for one config; returns what results.json (or ratio.json) holds."""
    if config.rounds:
        return _ratio_run(config, command)
    out = config.out
    models_dir, manifest = _models(config)
    serving = serve_config.parse(["--models", str(models_dir), *config.serve_args], environ={})
    loaded = {model.name: model for model in (load_model(path, serving) for path in discover(models_dir))}
    missing = set(config.only) - set(loaded)
    if missing:
        raise BenchError(f"--only names {sorted(missing)}, not in {str(models_dir)!r}; it has {sorted(loaded)}")
    chosen = [loaded[name] for name in (config.only or loaded)]
    del loaded  # the sweep loads its own sessions; one resnet152 at a time is enough memory
    load = os.getloadavg()[0]
    if load > BUSY_LOAD:
        say(f"warning: 1-minute load average is {load:.2f} (> {BUSY_LOAD}): other work shares the cores")
    files = payload_files.jpegs_for(out / "payloads", config.payloads)

    cards, decode_ms, raw_points, pixels = {}, {}, [], {}
    while chosen:
        model = chosen.pop(0)
        card = model.card
        cards[model.name] = {"arch": card.arch, "precision": card.precision, "input_size": card.preprocessing.input_size,
                             "classes": card.num_classes, "file": str(model.path), "providers": list(model.providers),
                             "weights": manifest.get(model.name, {}).get("weights", "as exported"),
                             "int8_gate": manifest.get(model.name, {}).get("judgement"), "input_name": card.input_name}
        decode_ms[model.name] = {kind: raw.decode_ms(files[kind], card.preprocessing, serving.max_pixels)
                                 for kind in config.payloads if kind not in payload_files.PIXELS_PER_REQUEST}
        for kind, per_request in payload_files.PIXELS_PER_REQUEST.items():  # preprocessed here: nothing to decode
            if kind in config.payloads:
                pixels.setdefault(model.name, {})[kind] = payload_files.pixels(
                    out / "payloads", files[payload_files.PIXELS_FROM], model.name, card.preprocessing,
                    model.input_dtype, serving.max_pixels, per_request)
                decode_ms[model.name][kind] = 0.0
        say(f"{model.name}: decode + preprocess " + ", ".join(f"{k} {v:.1f} ms" for k, v in decode_ms[model.name].items()))
        path, model = model.path, None
        raw_points += raw.sweep(path, serving, config.raw_seconds, on_point=lambda p: say(
            f"raw ORT {p.model} batch {p.batch}: {p.images_per_s:.1f} img/s, {p.p50_ms:.1f} ms per batch"))

    results = {
        "meta": _meta(config, command, serving, manifest),
        "models": cards,
        "payloads": {k: {"description": payload_files.DESCRIPTIONS[k], "files": [str(p) for p in v],
                         "bytes": [p.stat().st_size for p in v]}
                     for k, v in {**files, **{kind: [f for by_kind in pixels.values() for f in by_kind.get(kind, [])]
                                                 for kind in payload_files.PIXELS_PER_REQUEST}}.items()
                     if k in config.payloads},
        "decode_ms": decode_ms,
        "raw": [asdict(p) for p in raw_points],
        "service": _service_runs(config, models_dir, cards, files, pixels),
        "baseline": _baseline_runs(config, cards, files, serving) if config.baseline else [],
    }
    raw_best = {m: max(p["images_per_s"] for p in results["raw"] if p["model"] == m) for m in cards}
    for r in results["service"]:
        r["x_raw_best"] = round(r["images_per_s"] / raw_best[r["model"]], 3)
    results["targets"] = report.targets(results)
    results["meta"]["load_average_end"] = os.getloadavg()
    paths = report.write(results, out)
    say(f"wrote {paths['json']}, {paths['table']} and {paths['plot']}")
    return results


def _ratio_run(config: BenchConfig, command: str) -> dict:
    """--rounds N: the service against raw ONNX Runtime at modest load, in interleaved rounds."""
    models_dir, manifest = _models(config)
    serving = serve_config.parse(["--models", str(models_dir), *config.serve_args], environ={})
    paths = {model.name: model.path for model in (load_model(path, serving) for path in discover(models_dir))}
    missing = set(config.only) - set(paths)
    if missing:
        raise BenchError(f"--only names {sorted(missing)}, not in {str(models_dir)!r}; it has {sorted(paths)}")
    chosen = {name: paths[name] for name in (config.only or paths)}
    concurrency = config.concurrency[0] if len(config.concurrency) == 1 else 8
    load_at_start = os.getloadavg()
    load = load_at_start[0]
    if load > BUSY_LOAD:
        say(f"warning: 1-minute load average is {load:.2f} (> {BUSY_LOAD}): other work shares the cores")
    payload = config.payloads[0] if len(config.payloads) == 1 else ratio.RATIO_PAYLOAD
    if payload == "12mp":
        raise BenchError("--rounds measures the photo or pixels payload, got --payloads 12mp")
    files = payload_files.build(config.out / "payloads", (payload_files.PIXELS_FROM,))[payload_files.PIXELS_FROM]
    requests = {}
    for name, path in chosen.items():
        if payload == "pixels":
            model = load_model(path, serving)
            pixels = payload_files.pixels(config.out / "payloads", files, name, model.card.preprocessing,
                                          model.input_dtype, serving.max_pixels)
            requests[name] = servers.load_request("pixels", name, pixels, model.card.input_name, config.headers)
        else:
            requests[name] = servers.load_request(payload, name, files, "", config.headers)
    served = servers.served_subset(config.out / "logs" / "served-models", list(chosen.values()))
    say(f"starting resnet-serve on {served} {' '.join(config.serve_args)}".rstrip())
    server = servers.start_service(served, next(iter(chosen)), config.serve_args, config.out / "logs", config.headers)
    try:
        rounds = ratio.measure(chosen, files, requests, server.url, server.pid, config.rounds, concurrency,
                               config.warmup_s, config.duration_s, config.raw_seconds, serving, say)
    finally:
        server.stop()
    rows = ratio.summary(rounds)
    meta = {**_meta(config, command, serving, manifest), "concurrency": concurrency, "payload": payload,
            "load_average_start": load_at_start, "load_average_end": os.getloadavg()}
    results = {"meta": meta, "rounds": [asdict(r) for r in rounds], "summary": rows}
    config.out.mkdir(parents=True, exist_ok=True)
    write_atomically(config.out / "ratio.json", lambda f: f.write(json.dumps(results, indent=1).encode()))
    text = (f"{ratio.table(rows, concurrency)}\n\n`{command}`; payload {payload}; {cpu_name()}, {os.cpu_count()} CPUs, "
            f"load average {meta['load_average_start'][0]:.2f} at the start, {meta['load_average_end'][0]:.2f} at the end.\n")
    write_atomically(config.out / "ratio.md", lambda f: f.write(text.encode()))
    say(f"wrote {config.out / 'ratio.json'} and {config.out / 'ratio.md'}")
    return results


def _models(config: BenchConfig) -> tuple[Path, dict]:
    """The models folder, and the bench's manifest of how its own models were made (if it made them)."""
    if config.models is not None:
        manifest = config.models / "bench-models.json"
        return config.models, json.loads(manifest.read_text()) if manifest.is_file() else {}
    from bench import models  # imports torch and the exporter: only when the bench builds models

    folder = config.out / "models"
    return folder, models.build(folder, log=say)


def _service_runs(config: BenchConfig, models_dir: Path, cards: dict, files: dict, pixels: dict) -> list[dict]:
    levels = [(m, k, c) for m in cards for k in config.payloads for c in config.concurrency]
    if config.url is None:
        if config.only:  # serve only the measured models: less memory, a shorter warm-up
            models_dir = servers.served_subset(config.out / "logs" / "served-models",
                                               [Path(c["file"]) for c in cards.values()])
        say(f"starting resnet-serve on {models_dir} {' '.join(config.serve_args)}".rstrip())
        server = servers.start_service(models_dir, next(iter(cards)), config.serve_args, config.out / "logs",
                                       config.headers)
        url, pid = server.url, server.pid
    else:
        server, url, pid = None, config.url.rstrip("/"), None
        with urllib.request.urlopen(servers.ready_request(url, config.headers), timeout=5):
            pass
    runs = []
    try:
        for index, (model, kind, concurrency) in enumerate(levels, 1):
            sent = pixels[model][kind] if kind in pixels.get(model, {}) else files[kind]
            request = servers.load_request(kind, model, sent, cards[model]["input_name"], config.headers)
            result = servers.run_load(url, concurrency=concurrency, warmup_s=config.warmup_s,
                                      duration_s=config.duration_s, server_pid=pid, **request)
            runs.append(_level(result, model, cards[model], kind, (result.get("batch_sizes") or {}).get(model)))
            say(f"[{index}/{len(levels)}] service {model} {kind} c={concurrency}: {_summary(runs[-1])}")
    finally:
        if server is not None:
            server.stop()
    return runs


def _baseline_runs(config: BenchConfig, cards: dict, files: dict, serving) -> list[dict]:
    runs = []
    for model, card in cards.items():
        if card["precision"] != "fp32":
            continue  # eager PyTorch has no int8 path for these files: the baseline is the fp32 network
        threads = model_threads(serving)  # the baseline runs one model, as each raw ORT point does
        say(f"starting the PyTorch eager baseline for {model} ({threads} threads)")
        with servers.start_baseline(Path(card["file"]), threads, config.out / "logs") as server:
            for kind in [k for k in config.payloads if k in files]:  # image files: the baseline has no pixel input
                for concurrency in config.baseline_concurrency:
                    result = servers.run_load(server.url, "/classify", files[kind], concurrency, config.warmup_s,
                                              config.duration_s, server.pid, metrics=False, headers=config.headers)
                    runs.append(_level(result, model, card, kind, 1.0))
                    say(f"baseline {model} {kind} c={concurrency}: {_summary(runs[-1])}")
    return runs


def _level(result: dict, model: str, card: dict, payload: str, mean_batch) -> dict:
    latencies = result.pop("latencies_ms")
    result.pop("batch_sizes", None)
    return {"model": model, "precision": card["precision"], "payload": payload, **result, "mean_batch": mean_batch,
            "latency_samples": len(latencies)}


def _summary(r: dict) -> str:
    errors = f", errors {r['errors']}" if r["errors"] else ""
    batch = f", mean batch {r['mean_batch']:.2f}" if r.get("mean_batch") else ""
    return f"{r['images_per_s']:.1f} img/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms{batch}{errors}"


def _meta(config: BenchConfig, command: str, serving, manifest: dict) -> dict:
    import onnxruntime

    labels = sorted({entry["weights"] for entry in manifest.values()})
    return {
        "command": command,
        "git_commit": git_commit(),  # the code measured; "-dirty" when it had uncommitted edits
        "out": str(config.out),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "serve_config": {k: str(v) for k, v in vars(serving).items()},
        "bench_config": {k: str(v) for k, v in asdict(config).items() if k != "headers"},
        "headers": [header.split(":", 1)[0] for header in config.headers],  # names only: a value may be a key
        "weights_label": ", ".join(labels) if labels else None,
        "client": "bench.load: asyncio HTTP/1.1 keep-alive, one process",
    }


if __name__ == "__main__":
    sys.exit(main())
