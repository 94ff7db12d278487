"""Structured logs: one JSON object per line on stderr, request ids included.

A log call's `extra={...}` members become fields of the line, so a request's line carries its
`request_id`, model, status and timings, and a log pipeline needs no parsing rules. Fields bound to
the request being served (`begin`, `bind`: its trace id, its key's name) join every line logged
while serving it, from any module, through a context variable (asyncio copies it into the tasks a
request starts).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

# LogRecord's own attributes; anything else on a record came from `extra=` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

# The fields of the request this task serves; a fresh dict per request (begin), never shared by two.
_request_fields: ContextVar[dict | None] = ContextVar("resnet_serving.request_fields", default=None)


def begin(**fields) -> None:
    """Start the fields of a new request, in the current task's context."""
    _request_fields.set(dict(fields))


def bind(**fields) -> None:
    """Add fields to the current request's (a no-op outside a request)."""
    current = _request_fields.get()
    if current is not None:
        current.update(fields)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, message, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_request_fields.get() or {})
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str) -> None:
    """Send every logger (ours, uvicorn's, ONNX Runtime's Python side) through the JSON formatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
