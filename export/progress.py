"""Progress lines for the slow steps of an export, on stderr so stdout stays free for results.

Tracing resnet152 takes about 11 s and judging an int8 model runs hundreds of images through two
ONNX Runtime sessions on a CPU: a user should see which step is running and how far along it is.
A step is a log line when it starts and one when it ends; counting inside a step is a tqdm bar
(training.progress.bar: redrawn on a terminal, one line per update elsewhere).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator, TextIO

from training.progress import bar


class Progress:
    """Prints 'resnet-export: STEP ... done (1.2 s)' per step and counters inside long loops."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, prefix: str = "resnet-export") -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.prefix = prefix
        self._step: str | None = None
        self._bar = None

    def say(self, message: str) -> None:
        """One line, whatever step is running."""
        if self.enabled:
            print(f"{self.prefix}: {message}", file=self.stream, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Announce a step, then report its wall time when it ends (or that it failed)."""
        start = time.monotonic()
        self._step = name
        self.say(f"{name} ...")
        try:
            yield
        except BaseException:
            self.say(f"{name}: failed after {time.monotonic() - start:.1f} s")
            raise
        finally:
            self._step = None
        self.say(f"{name}: done ({time.monotonic() - start:.1f} s)")

    def count(self, done: int, total: int, unit: str = "images") -> None:
        """A counter inside the current step: `done` of `total` so far; the bar closes at `total`."""
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = bar(f"{self.prefix}: {self._step or 'working'}", total, stream=self.stream, unit=unit)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._bar.close()
            self._bar = None
