"""Prometheus metrics in the text exposition format (version 0.0.4), written by hand.

Four small types are all the service needs, so it carries no client library. Every observation is
made on the event loop thread (timings measured in worker threads are handed back first), so no
locks are needed.
"""

from __future__ import annotations

import bisect
import math
from typing import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: 0.5 ms to 30 s, roughly x2.5 per step, enough to tell queueing from inference.
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Confidence signals lie in [0, 1]; the cascade's thresholds usually sit in the upper half.
CONFIDENCE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labels = name, help, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def samples(self) -> Iterable[str]:
        for key, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.labels, key)} {_number(value)}"


class Gauge:
    """A value read at scrape time from a callback returning {label values: value}."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: tuple[str, ...], read: Callable[[], dict]) -> None:
        self.name, self.help, self.labels, self.read = name, help, labels, read

    def samples(self) -> Iterable[str]:
        for key, value in sorted(self.read().items()):
            yield f"{self.name}{_labels(self.labels, key)} {_number(value)}"


class Histogram:
    """Cumulative bucket counts, sum and count per label set."""

    kind = "histogram"

    def __init__(
        self, name: str, help: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] = SECONDS
    ) -> None:
        self.name, self.help, self.labels = name, help, labels
        self.buckets = tuple(sorted(buckets))
        self.series: dict[tuple[str, ...], list] = {}  # labels -> [per-bucket counts..., +Inf count, sum]

    def observe(self, value: float, *labels: str) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0] * (len(self.buckets) + 1) + [0.0]
        series[bisect.bisect_left(self.buckets, value)] += 1  # le is inclusive: value == bound counts
        series[-1] += value

    def samples(self) -> Iterable[str]:
        for key, series in sorted(self.series.items()):
            cumulative = 0
            for bound, count in zip((*self.buckets, math.inf), series[:-1]):
                cumulative += count
                le = 'le="' + _number(bound) + '"'
                yield f"{self.name}_bucket{_labels(self.labels, key, le)} {cumulative}"
            yield f"{self.name}_sum{_labels(self.labels, key)} {_number(series[-1])}"
            yield f"{self.name}_count{_labels(self.labels, key)} {cumulative}"


class Metrics:
    """The service's metrics; `render()` is the body of GET /metrics."""

    def __init__(self, queue_depth: Callable[[], dict]) -> None:
        self.requests = Counter(
            "resnet_requests_total", "Classification requests answered, by model and HTTP status.", ("model", "status")
        )
        self.images = Counter("resnet_images_total", "Images classified.", ("model",))
        self.request_seconds = Histogram(
            "resnet_request_duration_seconds", "Classification request latency, arrival to answer.", ("model",)
        )
        self.queue_wait = Histogram(
            "resnet_queue_wait_seconds", "Time an image waited in its model's queue for a batch.", ("model",)
        )
        self.preprocess = Histogram("resnet_preprocess_seconds", "Decode and preprocessing time per image.", ("model",))
        self.inference = Histogram("resnet_inference_seconds", "ONNX Runtime time per batch.", ("model",))
        # CUDA only (I/O binding): the three parts of one batch, copy_in, compute and copy_out.
        self.device_seconds = Histogram(
            "resnet_device_seconds", "GPU time per batch by stage: copy_in, compute, copy_out.", ("model", "stage")
        )
        self.batch_size = Histogram(
            "resnet_batch_size", "Images per inference.", ("model",), (1, 2, 4, 8, 16, 32, 64, 128)
        )
        self.queue_depth = Gauge(
            "resnet_queue_depth", "Images admitted and not yet answered, per model.", ("model",), queue_depth
        )
        # model=auto (service/cascade.py): where answers come from and why escalations did not happen.
        self.cascade_answers = Counter(
            "resnet_cascade_answers_total", "model=auto images answered, by rung.", ("model",)
        )
        self.cascade_escalations = Counter(
            "resnet_cascade_escalations_total", "model=auto images sent on to a deeper rung.", ("model", "to")
        )
        self.cascade_skipped = Counter(
            "resnet_cascade_escalations_skipped_total",
            "model=auto escalations not made, by rung and reason (budget, overloaded).",
            ("model", "reason"),
        )
        self.cascade_confidence = Histogram(
            "resnet_cascade_confidence", "model=auto confidence signal per image, by rung.", ("model",), CONFIDENCE
        )
        self.all = (self.requests, self.images, self.request_seconds, self.queue_wait, self.preprocess,
                    self.inference, self.device_seconds, self.batch_size, self.queue_depth, self.cascade_answers,
                    self.cascade_escalations, self.cascade_skipped, self.cascade_confidence)  # fmt: skip

    def render(self) -> str:
        """All metrics in the Prometheus text format."""
        lines = []
        for metric in self.all:
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"
