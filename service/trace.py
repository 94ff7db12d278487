"""W3C Trace Context: follow one request through the service's logs, and optionally OpenTelemetry.

A request's `traceparent` header (https://www.w3.org/TR/trace-context/) gives its trace id; one that
is missing or malformed (wrong length, upper-case hex, all-zero ids, version ff, or sent twice)
starts a new trace, as the specification says, and is never an error. The service's own span, a
new span id under that trace, is the request's `traceparent` in the response, and the trace id is
in `X-Trace-ID` and in every log line written while serving the request (service/logs.py), so a
trace id from a gateway, a mesh or a client finds the service's lines.

OpenTelemetry is optional (`pip install 'resnet-serving[otel]'`) and off unless the standard
variables ask for it: OTEL_TRACES_EXPORTER (otlp or console) or OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT,
and not OTEL_SDK_DISABLED=true. Then the request's span is exported with child spans for
authentication, admission, decoding, each image's queue wait, the batch inference it ran in (one
span per batch, linked to every request in it) and the cascade's escalations. Without it nothing of
OpenTelemetry is imported, and `span()` is a shared no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time

from service import errors, logs

log = logging.getLogger("service.trace")

SCOPE_KEY = "resnet_serving.trace"  # the ASGI scope key holding the request's Trace
# version 2 hex, trace id 32, parent id 16, flags 2, lower-case; a later version may append fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
MAX_TRACESTATE = 512  # the specification lets a vendor truncate beyond 512 characters
_NOOP = contextlib.nullcontext()
_tracer = None  # OpenTelemetry's tracer, once setup() found it installed and configured


class Trace:
    """One request's place in a trace: the trace id, the service's span id, the caller's span id."""

    __slots__ = ("trace_id", "span_id", "parent_id", "flags", "state", "span")

    def __init__(self, trace_id: str, span_id: str, parent_id: str | None, flags: str, state: str | None) -> None:
        self.trace_id, self.span_id, self.parent_id, self.flags, self.state = trace_id, span_id, parent_id, flags, state
        self.span = None  # the OpenTelemetry server span, when tracing is on

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse_traceparent(values: list[str]) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) from the request's traceparent headers, or None if invalid."""
    if len(values) != 1:
        return None
    match = _TRACEPARENT.fullmatch(values[0].strip())
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags


def _new_id(hex_digits: int) -> str:
    while True:
        value = os.urandom(hex_digits // 2).hex()
        if value.strip("0"):
            return value


def start(headers: list[tuple[bytes, bytes]]) -> Trace:
    """The request's Trace from its headers: the caller's trace continued, or a new one."""
    parents = [v.decode("latin-1") for k, v in headers if k == b"traceparent"]
    parsed = parse_traceparent(parents)
    if parsed is None:
        trace_id, parent_id, flags, state = _new_id(32), None, "00", None
    else:
        trace_id, parent_id, flags = parsed
        states = [v.decode("latin-1") for k, v in headers if k == b"tracestate"]
        state = ",".join(states)[:MAX_TRACESTATE] or None  # several headers are one list (RFC 9110 5.3)
    trace = Trace(trace_id, _new_id(16), parent_id, flags, state)
    if _tracer is not None:
        _start_server_span(trace)
    return trace


def response_headers(scope) -> dict[str, str]:
    """The trace headers of the response to the request of `scope` (none before TraceContext ran)."""
    trace = scope.get(SCOPE_KEY)
    return {} if trace is None else {"traceparent": trace.traceparent, "X-Trace-ID": trace.trace_id}


class TraceContext:
    """ASGI middleware: the request's Trace in its scope, its ids in every log line of the request,
    its headers on the response; with OpenTelemetry, the server span around the request."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace = start(scope["headers"])
        scope[SCOPE_KEY] = trace
        # Each request runs in its own task (uvicorn), so this binding ends with the request.
        logs.begin(trace_id=trace.trace_id, span_id=trace.span_id)
        extra = [(b"traceparent", trace.traceparent.encode()), (b"x-trace-id", trace.trace_id.encode())]
        status = 500

        async def send_with_trace(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                ours = {b"traceparent", b"x-trace-id"}
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in ours]
                message = {**message, "headers": [*headers, *extra]}
            await send(message)

        if trace.span is None:
            await self.app(scope, receive, send_with_trace)
            return
        token = _attach(trace.span)
        try:
            await self.app(scope, receive, send_with_trace)
        except errors.ServiceError as error:  # answered by Litestar's handler, outside this middleware
            status = error.status
            raise
        finally:
            _end_server_span(trace.span, scope, status, token)


def span(name: str, **attributes):
    """A child span of the current one (a context manager); a shared no-op without OpenTelemetry."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=attributes)


def current_link():
    """The current span's context, for a batch span to link to; None without OpenTelemetry."""
    if _tracer is None:
        return None
    from opentelemetry import trace as otel

    context = otel.get_current_span().get_span_context()
    return context if context.is_valid else None


def batch_span(model: str, links: list, waits: list[float]):
    """The span of one batch inference, linked to each request in it, after recording each image's
    queue wait (`waits`, seconds, ending now) as a span under its own request; a no-op without OpenTelemetry."""
    if _tracer is None:
        return _NOOP
    from opentelemetry import trace as otel

    now = time.time_ns()
    for link, wait in zip(links, waits):
        if link is not None:
            parent = otel.set_span_in_context(otel.NonRecordingSpan(link))
            wait_span = _tracer.start_span("queue wait", parent, attributes={"model": model},
                                           start_time=now - int(wait * 1e9))  # fmt: skip
            wait_span.end(end_time=now)
    return _tracer.start_as_current_span(
        "inference", context=otel.set_span_in_context(otel.INVALID_SPAN),  # a root: it serves many requests
        links=[otel.Link(link) for link in links if link is not None],
        attributes={"model": model, "batch_size": len(waits)},
    )


# --- OpenTelemetry, only when installed and configured -------------------------------------------


def configured(environ=os.environ) -> bool:
    """Whether the standard OTEL_* variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return bool(exporter or any(environ.get(name) for name in endpoints))


def setup(environ=os.environ) -> bool:
    """Turn OpenTelemetry spans on if the OTEL_* variables ask for them and the SDK is installed."""
    global _tracer
    if not configured(environ):
        return False
    exporter_name = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    try:
        from opentelemetry import trace as otel
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        if exporter_name == "console":
            exporter = ConsoleSpanExporter()
        elif exporter_name == "otlp":  # reads OTEL_EXPORTER_OTLP_* itself
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            log.error("OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console or none): no spans", exporter_name)
            return False
    except ImportError as error:
        log.warning("OTEL_* variables ask for traces, but OpenTelemetry is not installed (%s): "
                    "pip install 'resnet-serving[otel]'; trace ids are still logged", error)  # fmt: skip
        return False
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the sampler OTEL_TRACES_SAMPLER.
    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", "resnet-serve")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    otel.set_tracer_provider(provider)
    _tracer = otel.get_tracer("resnet-serving")
    log.info("OpenTelemetry spans on: exporter %s", exporter_name)
    return True


def flush() -> None:
    """Export the spans still buffered (the app's lifespan calls it on the way out); a no-op when off."""
    if _tracer is not None:
        from opentelemetry import trace as otel

        otel.get_tracer_provider().force_flush()


def _start_server_span(trace: Trace) -> None:
    from opentelemetry import trace as otel
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {}
    if trace.parent_id is not None:
        carrier["traceparent"] = f"00-{trace.trace_id}-{trace.parent_id}-{trace.flags}"
        if trace.state:
            carrier["tracestate"] = trace.state
    parent = TraceContextTextMapPropagator().extract(carrier)
    trace.span = _tracer.start_span("request", parent, kind=otel.SpanKind.SERVER)
    context = trace.span.get_span_context()
    trace.trace_id, trace.span_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"
    trace.flags = f"{int(context.trace_flags):02x}"


def _attach(server_span):
    from opentelemetry import context, trace as otel

    return context.attach(otel.set_span_in_context(server_span))


def _end_server_span(server_span, scope, status: int, token) -> None:
    from opentelemetry import context

    server_span.set_attribute("http.request.method", scope["method"])
    server_span.set_attribute("url.path", scope["path"])
    server_span.set_attribute("http.response.status_code", status)
    server_span.end()
    context.detach(token)
