"""Per-caller request limits: a token bucket per API key name (or per client address without keys).

A bucket holds up to `burst` tokens and refills at `rate` tokens a second; each request takes one.
An empty bucket answers 429 with Retry-After, the whole seconds until a token is back, so a client
that waits that long is served (the test sends a burst, waits, and is served again). It is checked
from the headers, before a byte of the body is read, like admission (service/engine/admission.py).

One process keeps its own buckets: behind N replicas a caller gets up to N times the rate. Client
addresses are the TCP peer's (X-Forwarded-For is not trusted); behind a proxy they are the proxy's,
so use keys there.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from service.errors import RateLimited

MAX_BUCKETS = 10_000  # client addresses remembered; the least recently seen is forgotten first


class Limiter:
    """Token buckets by caller; single-threaded (the event loop)."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        if not rate > 0 or burst < 1:
            raise ValueError(f"a limit needs rate > 0 and burst >= 1, got rate={rate!r}, burst={burst!r}")
        self.rate, self.burst, self.clock = rate, burst, clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller -> (tokens, at)

    def take(self, caller: str) -> None:
        """Take one token from `caller`'s bucket, or raise RateLimited (429) with Retry-After."""
        now = self.clock()
        tokens, at = self.buckets.pop(caller, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self.buckets[caller] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self.rate)
            raise RateLimited(
                f"over the limit of {self.rate:g} requests per second (burst {self.burst}); retry in {wait} s",
                retry_after_s=max(1, wait),
            )
        self.buckets[caller] = (tokens - 1.0, now)  # moved to the end: most recently seen
        if len(self.buckets) > MAX_BUCKETS:
            self.buckets.popitem(last=False)
