"""The ceilings the service is measured against: raw ONNX Runtime and the decode path, in-process.

Raw ONNX Runtime runs each model file with the service's own session options (service.engine.runtime,
same threads) on ready-made batches of the model's input (uint8 pixels or float32, as its card
says): it decodes nothing, sends nothing, waits for nothing.
Its best batched throughput is the ceiling of the service's; its batch-1 latency plus one image's
decode time is the floor of the service's latency at concurrency 1. The decode path is the service's
own (artifact.preprocess.prepare), timed on one thread per payload.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from artifact import preprocess
from service.config import ServeConfig
from service.engine.runtime import load_model


# ONNX Runtime's default logger prints a CUDA provider that cannot load as an error on stderr at every
# session, even with the session's own log level at 3; what each session really runs on is recorded
# from session.get_providers() instead, and a session that cannot be created still raises.
ort.set_default_logger_severity(4)


@dataclass(frozen=True)
class RawPoint:
    """Raw ONNX Runtime at one batch size."""

    model: str
    precision: str
    batch: int
    runs: int  # timed inferences
    images_per_s: float
    p50_ms: float  # median time of one inference of the whole batch
    p95_ms: float


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... and max_batch itself: the shapes the batcher forms most."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch]


def sweep(path: Path, config: ServeConfig, seconds: float, on_point=lambda point: None) -> list[RawPoint]:
    """Time one model file at every batch size up to its batch limit (max_batch_size), about `seconds` each."""
    model = load_model(path, config)
    points = []
    for batch in batch_sizes(config.batch_limit(model.device)):
        inputs = preprocess.random_batch(model.card.preprocessing, batch)
        feed, fetch = {model.card.input_name: inputs.astype(model.input_dtype)}, [model.card.output_name]
        for _ in range(2):  # first runs allocate and pick kernels for this shape
            model.session.run(fetch, feed)
        times = []
        deadline = time.perf_counter() + seconds
        while len(times) < 3 or time.perf_counter() < deadline:
            started = time.perf_counter()
            model.session.run(fetch, feed)
            times.append(time.perf_counter() - started)
        total = sum(times)
        point = RawPoint(model.name, model.card.precision, batch, len(times), round(batch * len(times) / total, 2),
                         round(float(np.percentile(times, 50)) * 1000, 2), round(float(np.percentile(times, 95)) * 1000, 2))
        on_point(point)
        points.append(point)
    return points


def decode_ms(files: list[Path], prep, max_pixels: int, repeats: int = 15) -> float:
    """Median milliseconds of the service's decode + preprocessing over the files, one thread."""
    bodies = [Path(f).read_bytes() for f in files]
    for body in bodies:
        preprocess.prepare(body, prep, max_pixels)
    times = []
    for _ in range(repeats):
        for body in bodies:
            started = time.perf_counter()
            preprocess.prepare(body, prep, max_pixels)
            times.append(time.perf_counter() - started)
    return round(float(np.median(times)) * 1000, 2)
