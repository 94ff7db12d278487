"""A small progress bar on stderr: one line redrawn in place on a terminal, a plain line per
refresh otherwise (CI logs, torchrun's prefixed output). tqdm would do; this avoids a dependency."""

from __future__ import annotations

import sys
import time


class Progress:
    """`update(done, **stats)` redraws "label [#####-----] done/total stats, ETA"; `close()` ends it."""

    def __init__(self, label: str, total: int, enabled: bool = True, stream=None, width: int = 20):
        self.label, self.total, self.enabled, self.width = label, total, enabled, width
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.last_line = ""

    def update(self, done: int, **stats: str | float) -> None:
        if not self.enabled:
            return
        filled = int(self.width * done / max(self.total, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.monotonic() - self.start
        eta = elapsed / done * (self.total - done) if done else 0.0
        text = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
        self.last_line = f"{self.label} [{bar}] {done}/{self.total} {text} eta {eta:.0f}s"
        if self.tty:
            self.stream.write("\r\033[K" + self.last_line)
        else:
            self.stream.write(self.last_line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self.last_line:
            self.stream.write("\n")
            self.stream.flush()
