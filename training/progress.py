"""Progress bars on stderr through tqdm, shared by resnet-train and resnet-export.

On a terminal tqdm redraws one line in place. Anywhere else (CI logs, torchrun's prefixed output, a
file) each update becomes one plain line, because a log of carriage-return redraws is one unreadable
line: `_Lines` turns tqdm's redraws into newline-terminated lines and the bar refreshes on every
update instead of every 0.1 s.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


class _Lines:
    """A file for tqdm that writes each redraw as its own line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def bar(desc: str, total: int, enabled: bool = True, stream: TextIO | None = None, unit: str = "it") -> tqdm:
    """A tqdm bar on `stream` (stderr); `bar.set_postfix(..., refresh=False)` then `bar.update(n)`."""
    stream = stream if stream is not None else sys.stderr
    tty = bool(getattr(stream, "isatty", lambda: False)())
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=stream if tty else _Lines(stream),
                dynamic_ncols=tty, ncols=None if tty else 100, mininterval=0.1 if tty else 0, miniters=None if tty else 1,
                leave=tty)  # off a terminal the last update is already a line of its own
