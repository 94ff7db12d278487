"""The service against raw ONNX Runtime at modest load: `resnet-bench --rounds N`.

    resnet-bench --models results/models --only resnet18,resnet18-int8,resnet152 --rounds 3
    resnet-bench --models results/models --only resnet18 --rounds 3 --payloads pixels

For each model, N rounds; each round times raw ONNX Runtime and then the service, back to back, so
that whatever else shares the machine weighs on both alike:
- raw: the model file in a session with ONNX Runtime's *default* options (every core, spinning
  threads), on the `photo` payload as the model takes it (artifact.preprocess.prepare, done before
  timing), at batch 1, 2, 4, 8, 16 and 32; its best batch is the round's reference. A weaker
  reference would not make the service faster, so it stays the strongest one ORT offers.
- service: resnet-serve (one process for the whole run, flags after `--`) under `concurrency`
  closed-loop clients posting the same JPEG files (or, with `--payloads pixels`, those images
  preprocessed ahead as the model's input over the Open Inference Protocol, so the service decodes
  nothing), with the clients' own CPU beside it.
- raw as served: then raw ONNX Runtime again, at the batch the service really formed (its mean,
  rounded) in a session with the service's own options (service.engine.runtime.session_options: its
  thread count, no spinning), run from as many threads at once as the service has instances. It
  splits the gap in two: reference -> as served is what batch size and session options cost; as
  served -> service is the service's own work per image (HTTP, decode unless pixels, queues,
  copies) and its clients' share of the cores.
The table gives the median over rounds of each, and the ratio of the medians.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from artifact import ModelCard
from bench import servers
from artifact import preprocess
from service.engine import runtime
from service.config import ServeConfig

BATCHES = (1, 2, 4, 8, 16, 32)  # the reference is raw ORT's best batch from 1 to 32
RATIO_PAYLOAD = "photo"  # the 500x375 JPEGs of docs/performance-per-image.md


@dataclass(frozen=True)
class Round:
    """One round of one model: raw ORT's best batch, then the service."""

    model: str
    raw_images_per_s: float  # raw ORT at its best batch this round
    raw_best_batch: int
    service_images_per_s: float
    service_p50_ms: float | None
    client_cpu_cores: float  # the load generator's CPU seconds per second
    server_cpu_cores: float | None  # resnet-serve's
    mean_batch: float | None  # the service's mean batch size over the window
    served_raw_images_per_s: float | None = None  # raw ORT at the service's batch and session options


def _session(path: Path, options: ort.SessionOptions | None) -> tuple[ort.InferenceSession, ModelCard]:
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)


def _rate(session: ort.InferenceSession, card: ModelCard, images: list[np.ndarray], batch: int,
          seconds: float, threads: int = 1) -> float:
    """Images per second of `session` at `batch` from `threads` callers at once, over at least
    `seconds` and two runs each."""
    feed = {card.input_name: np.stack([images[i % len(images)] for i in range(batch)])}
    session.run(None, feed)  # the first run of a shape allocates and picks kernels
    runs = [0] * threads
    started = time.perf_counter()

    def caller(index: int) -> None:
        while time.perf_counter() - started < seconds or runs[index] < 2:
            session.run(None, feed)
            runs[index] += 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(caller, range(threads)))
    return batch * sum(runs) / (time.perf_counter() - started)


def raw_best(path: Path, files: list[Path], max_pixels: int, seconds: float) -> tuple[float, int]:
    """Images per second of the model file at its best batch in BATCHES, with default session options."""
    session, card = _session(path, None)  # default options
    images = [preprocess.prepare(f.read_bytes(), card.preprocessing, max_pixels) for f in files]
    best = max((_rate(session, card, images, batch, seconds), batch) for batch in BATCHES)
    return round(best[0], 2), best[1]


def raw_as_served(path: Path, files: list[Path], max_pixels: int, seconds: float, batch: int,
                  options: ort.SessionOptions, instances: int = 1) -> float:
    """Images per second of the model file at `batch` in a session with the service's options, run
    by `instances` threads at once as the service's instances run it."""
    session, card = _session(path, options)
    images = [preprocess.prepare(f.read_bytes(), card.preprocessing, max_pixels) for f in files]
    return round(_rate(session, card, images, batch, seconds, instances), 2)


def measure(models: dict[str, Path], files: list[Path], requests: dict[str, dict], url: str, pid: int | None,
            rounds: int, concurrency: int, warmup_s: float, duration_s: float, raw_seconds: float,
            serving: ServeConfig, say=lambda message: None) -> list[Round]:
    """`rounds` interleaved rounds of raw ORT, the service, then raw ORT as served, for each model in turn;
    raw ORT runs on `files` (JPEGs) prepared ahead, the service gets requests[model] (servers.run_load's
    path, payloads, protocol ...: the same JPEGs, or those images as the model's input)."""
    results = []
    for index in range(1, rounds + 1):
        for name, path in models.items():
            raw_speed, raw_batch = raw_best(path, files, serving.max_pixels, raw_seconds)
            load = servers.run_load(url, concurrency=concurrency, warmup_s=warmup_s, duration_s=duration_s,
                                    server_pid=pid, **requests[name])
            mean_batch = (load.get("batch_sizes") or {}).get(name)
            served_batch = max(1, round(mean_batch or 1))
            served = raw_as_served(path, files, serving.max_pixels, raw_seconds, served_batch,
                                   runtime.session_options(serving), serving.instances)
            results.append(Round(name, raw_speed, raw_batch, load["images_per_s"], load["p50_ms"],
                                 load["client_cpu_cores"], load["server_cpu_cores"], mean_batch, served))
            r = results[-1]
            share = r.service_images_per_s / r.raw_images_per_s
            say(f"round {index}/{rounds} {name}: raw ORT {r.raw_images_per_s:.1f} img/s (batch {r.raw_best_batch}), "
                f"as served {served:.1f} img/s (batch {served_batch}), "
                f"service {r.service_images_per_s:.1f} img/s at c={concurrency} (x{share:.2f}), "
                f"client {r.client_cpu_cores:.2f} cores")
    return results


def summary(rounds: list[Round]) -> list[dict]:
    """Per model: medians over rounds, the ratio of the medians, and the spread of the per-round ratios."""
    rows = []
    for name in dict.fromkeys(r.model for r in rounds):
        mine = [r for r in rounds if r.model == name]
        service = statistics.median(r.service_images_per_s for r in mine)
        raw = statistics.median(r.raw_images_per_s for r in mine)
        ratios = [r.service_images_per_s / r.raw_images_per_s for r in mine]
        rows.append({"model": name, "rounds": len(mine), "service_images_per_s": round(service, 1),
                     "raw_images_per_s": round(raw, 1), "ratio": round(service / raw, 2),
                     "ratio_min": round(min(ratios), 2), "ratio_max": round(max(ratios), 2),
                     "raw_best_batches": sorted({r.raw_best_batch for r in mine}),
                     "client_cpu_cores": round(statistics.median(r.client_cpu_cores for r in mine), 2),
                     "server_cpu_cores": _median([r.server_cpu_cores for r in mine]),
                     "mean_batch": _median([r.mean_batch for r in mine]),
                     "served_raw_images_per_s": _median([r.served_raw_images_per_s for r in mine])})
    return rows


def _median(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 2) if known else None


def table(rows: list[dict], concurrency: int) -> str:
    """The markdown table of `summary`."""
    lines = [f"| model | service img/s (c={concurrency}) | raw ONNX Runtime img/s (best batch) | ratio (range over rounds) "
             "| raw as served img/s | as served / raw | service / as served | service CPU cores | client CPU cores "
             "| mean batch |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        batches = ",".join(map(str, r["raw_best_batches"]))
        served = r.get("served_raw_images_per_s")
        split = (f"{served} | {served / r['raw_images_per_s']:.2f} | {r['service_images_per_s'] / served:.2f}"
                 if served else "- | - | -")
        lines.append(f"| {r['model']} | {r['service_images_per_s']} | {r['raw_images_per_s']} ({batches}) | "
                     f"{r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | {split} | "
                     f"{r['server_cpu_cores']} | {r['client_cpu_cores']} | {r['mean_batch']} |")
    return "\n".join(lines)

