"""CORS for browser clients on other origins, off unless --cors-origins names them.

Litestar's CORSConfig does the work: it answers a preflight (OPTIONS with Origin) itself, 204 with
the allowed methods and headers, or 400 for an origin not listed, and adds Access-Control-Allow-Origin
to every answer, errors included, so a page can read the service's own error message. Without it
no answer carries that header and a browser refuses the cross-origin read (the Fetch standard's CORS
check). The page at `/` is same-origin and needs none of this.
"""

from __future__ import annotations

from litestar.config.cors import CORSConfig

METHODS = ["GET", "POST"]  # every route of the API, both protocols
# What a browser client sends beyond the safelisted headers: a body's type, an API key, its own id,
# and W3C trace context (service/trace.py).
REQUEST_HEADERS = ["Content-Type", "Authorization", "X-Request-ID", "traceparent", "tracestate"]
# Readable by the calling script: the ids to quote, when to retry, what a 401 wants.
EXPOSED_HEADERS = ["X-Request-ID", "X-Trace-ID", "traceparent", "Retry-After", "WWW-Authenticate"]


def config(origins: tuple[str, ...]) -> CORSConfig | None:
    """Litestar's CORS for `origins` (exact origins, or "*"); None for none: CORS off."""
    if not origins:
        return None
    return CORSConfig(
        allow_origins=list(origins), allow_methods=METHODS, allow_headers=REQUEST_HEADERS,
        expose_headers=EXPOSED_HEADERS,
    )  # fmt: skip
