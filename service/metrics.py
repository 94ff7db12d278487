"""The service's Prometheus metrics, through prometheus-client (the standard Python client).

The metric names are the ones dashboards use; the small classes below keep the call sites of the
hand-written version (`counter.inc(*labels)`, `histogram.observe(value, *labels)`, a gauge read at
scrape time from a callback), so adding a metric is one line in `Metrics.__init__` plus `self.all`.
Each `Metrics` has its own registry: several apps in one process (tests) do not share series.
Observations happen on the event loop thread; their cost per image is measured in
docs/performance.md (under 1% of a 224x224 resnet18 image's time).
"""

from __future__ import annotations

from typing import Callable, Iterable

import prometheus_client
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# The text format 0.0.4, which prometheus-client writes for these names (plain ASCII, no escaping).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: 0.5 ms to 30 s, roughly x2.5 per step, enough to tell queueing from inference.
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Confidence signals lie in [0, 1]; the cascade's thresholds usually sit in the upper half.
CONFIDENCE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)

# No `<name>_created` series per label set: the hand-written exposition had none, and dashboards
# built on it do not expect them.
prometheus_client.disable_created_metrics()


def _child(metric, labels: tuple[str, ...]):
    # .labels() validates and locks on every call; the service's label sets are few and fixed.
    return metric.labels(*labels) if labels else metric


class Counter:
    """A monotonically increasing count per label set."""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labels = name, help, labels
        self.collector = prometheus_client.Counter(name, help, labels, registry=None)
        self.children: dict[tuple[str, ...], prometheus_client.Counter] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        child = self.children.get(labels) or self.children.setdefault(labels, _child(self.collector, labels))
        child.inc(amount)


class Histogram:
    """Cumulative bucket counts, sum and count per label set."""

    def __init__(
        self, name: str, help: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] = SECONDS
    ) -> None:
        self.name, self.help, self.labels = name, help, labels
        self.collector = prometheus_client.Histogram(name, help, labels, buckets=buckets, registry=None)
        self.children: dict[tuple[str, ...], prometheus_client.Histogram] = {}

    def observe(self, value: float, *labels: str) -> None:
        child = self.children.get(labels) or self.children.setdefault(labels, _child(self.collector, labels))
        child.observe(value)


class Gauge(Collector):
    """A value read at scrape time from a callback returning {label values: value}."""

    def __init__(self, name: str, help: str, labels: tuple[str, ...], read: Callable[[], dict]) -> None:
        self.name, self.help, self.labels, self.read = name, help, labels, read
        self.collector = self

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.help, labels=self.labels)
        for key, value in sorted(self.read().items()):
            family.add_metric(list(key), value)
        yield family


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
        # model=auto (service/depth/cascade.py): where answers come from and why escalations did not happen.
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
        # service/gate/access.py: by key name ("-": no or an unknown key; "anonymous": keys are off).
        self.api_requests = Counter(
            "resnet_api_requests_total", "Requests to keyed routes, by key name and outcome "
            "(admitted, unauthorized, rate_limited).", ("key", "outcome"),
        )  # fmt: skip
        self._registry: prometheus_client.CollectorRegistry | None = None
        self.all = (self.requests, self.images, self.request_seconds, self.queue_wait, self.preprocess,
                    self.inference, self.device_seconds, self.batch_size, self.queue_depth, self.cascade_answers,
                    self.cascade_escalations, self.cascade_skipped, self.cascade_confidence, self.api_requests)  # fmt: skip

    def render(self) -> str:
        """All metrics in the Prometheus text format."""
        if self._registry is None:  # registered on first scrape, so a metric added to self.all is included
            self._registry = prometheus_client.CollectorRegistry()
            for metric in self.all:
                self._registry.register(metric.collector)
        return prometheus_client.generate_latest(self._registry).decode()
