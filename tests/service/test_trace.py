"""W3C Trace Context through a real resnet-serve process: a client's trace id comes back in the
response and is in the request's log lines; a malformed or missing traceparent starts a new trace
(never an error); a fuzz of the headers gives no 5xx; and, with OpenTelemetry installed and asked
for by OTEL_* variables, the request's spans carry the client's trace id."""

from __future__ import annotations

import json
import time
import re

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from service.trace import parse_traceparent

from .conftest import encode, photo, start_server

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


def classify(server, headers: dict) -> httpx.Response:
    image = encode(photo("coffee.png").convert("RGB"))
    response = httpx.post(server.url + "/classify", content=image, timeout=30,
                          headers={"Content-Type": "image/jpeg", **headers})  # fmt: skip
    assert response.status_code == 200, response.text
    return response


def log_lines(server, request_id: str, timeout_s: float = 10.0) -> list[dict]:
    """The request's log lines; the access line is written after the response, so wait for it."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        mine = [line for line in lines if line.get("request_id") == request_id]
        if any(line.get("logger") == "service.access" for line in mine) or time.monotonic() > deadline:
            return mine
        time.sleep(0.05)


def test_a_client_trace_id_comes_back_and_is_in_the_requests_log_lines(server):
    response = classify(server, {"traceparent": PARENT, "tracestate": "vendor=opaque"})
    trace_id, span_id = TRACEPARENT.fullmatch(response.headers["traceparent"]).groups()
    assert trace_id == TRACE_ID == response.headers["X-Trace-ID"]
    assert span_id != "00f067aa0ba902b7"  # the service's own span, a child of the client's
    (line,) = log_lines(server, response.headers["X-Request-ID"])
    assert line["trace_id"] == TRACE_ID and line["span_id"] == span_id and line["status"] == 200


def test_an_error_answer_carries_the_trace_too(server):
    response = httpx.get(server.url + "/models/resnet50", headers={"traceparent": PARENT})
    assert response.status_code == 404 and response.headers["X-Trace-ID"] == TRACE_ID


@pytest.mark.parametrize("header", [
    None, "", "garbage", f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01", f"00-{'0' * 32}-00f067aa0ba902b7-01",
    f"00-{TRACE_ID}-{'0' * 16}-01", f"ff-{TRACE_ID}-00f067aa0ba902b7-01", f"00-{TRACE_ID}-00f067aa0ba902b7-01-extra",
    f"00-{TRACE_ID[:-1]}-00f067aa0ba902b7-01",
])  # fmt: skip
def test_a_missing_or_malformed_traceparent_starts_a_new_trace_and_is_not_an_error(server, header):
    response = classify(server, {} if header is None else {"traceparent": header})
    trace_id, _ = TRACEPARENT.fullmatch(response.headers["traceparent"]).groups()
    assert trace_id != TRACE_ID and trace_id.strip("0")
    (line,) = log_lines(server, response.headers["X-Request-ID"])
    assert line["trace_id"] == trace_id


def test_a_later_version_may_append_fields_and_two_traceparents_are_invalid():
    assert parse_traceparent([f"01-{TRACE_ID}-00f067aa0ba902b7-01-more"]) == (TRACE_ID, "00f067aa0ba902b7", "01")
    assert parse_traceparent([PARENT, PARENT]) is None


_HEADER_TEXT = st.text(st.characters(codec="latin-1", exclude_categories=("Cc",)), max_size=120)


@given(
    traceparent=st.one_of(
        _HEADER_TEXT,
        # near misses of the format: lengths one off, upper case, a suffix
        st.from_regex(r"[0-9a-fA-F]{2}-[0-9a-fA-F]{31,33}-[0-9a-fA-F]{15,17}-[0-9a-fA-F]{1,3}(-[ -~]{0,10})?",
                      fullmatch=True),
    ),
    tracestate=st.one_of(st.none(), _HEADER_TEXT),
)  # fmt: skip
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzzing_traceparent_and_tracestate_gives_no_5xx_and_always_a_valid_traceparent_back(
    server, traceparent, tracestate
):
    headers = {"traceparent": traceparent.strip(" \t").encode("latin-1")}
    if tracestate is not None:
        headers["tracestate"] = tracestate.strip(" \t").encode("latin-1")
    response = httpx.get(server.url + "/models", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    trace_id, _ = TRACEPARENT.fullmatch(response.headers["traceparent"]).groups()
    continued = parse_traceparent([traceparent.strip(" \t")])
    assert (trace_id == continued[0]) if continued else trace_id.strip("0")


def test_with_opentelemetry_the_requests_spans_carry_the_client_trace_id(models_dir, tmp_path, monkeypatch):
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # spans as JSON on stdout, which the log file holds
    monkeypatch.setenv("OTEL_SERVICE_NAME", "resnet-serve-test")
    server = start_server(models_dir, tmp_path, "--providers", "cpu")
    try:
        classify(server, {"traceparent": PARENT})
    finally:
        server.stop()  # flushes the batch span processor
    log = server.log()
    assert "OpenTelemetry spans on" in log
    spans = [json.loads(block) for block in re.findall(r"^\{\n.*?^\}$", log, re.M | re.S)]
    ours = {s["name"]: s for s in spans if s["context"]["trace_id"] == f"0x{TRACE_ID}"}
    assert {"request", "admission", "decode", "queue wait"} <= set(ours), sorted(ours)
    assert ours["request"]["parent_id"] == "0x00f067aa0ba902b7" and ours["request"]["kind"] == "SpanKind.SERVER"
    request_span = ours["request"]["context"]["span_id"]
    assert ours["admission"]["parent_id"] == request_span and ours["decode"]["parent_id"] == request_span
    (inference,) = [s for s in spans if s["name"] == "inference"
                    and any(link["context"]["trace_id"] == f"0x{TRACE_ID}" for link in s["links"])]  # fmt: skip
    assert inference["attributes"]["model"] == "resnet18" and inference["attributes"]["batch_size"] >= 1
