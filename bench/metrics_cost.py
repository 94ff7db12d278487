"""What one metrics call costs on the service's hot path (service/metrics.py, prometheus-client).

    python -m bench.metrics_cost        # microseconds per call, median of 5 rounds of 100k calls

Per classified image the service makes about five calls (a counter, four histogram observations);
compare with milliseconds of decode and inference per image.
"""

from __future__ import annotations

import statistics
import timeit

from service.metrics import Metrics


def main() -> None:
    metrics = Metrics(lambda: {("resnet18",): 1})
    calls = {
        "counter.inc": lambda: metrics.requests.inc("resnet18", "200"),
        "histogram.observe": lambda: metrics.inference.observe(0.004, "resnet18"),
    }
    for name, call in calls.items():
        rounds = timeit.repeat(call, number=100_000, repeat=5)
        print(f"{name}: {statistics.median(rounds) * 10:.2f} us per call (min {min(rounds) * 10:.2f})")
    rounds = timeit.repeat(metrics.render, number=100, repeat=5)
    print(f"render (GET /metrics): {statistics.median(rounds) * 10:.2f} ms")


if __name__ == "__main__":
    main()
