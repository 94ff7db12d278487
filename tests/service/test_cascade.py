"""model=auto on a real server over the colour ladder (colour_models.py), whose every answer is
known: escalation below the threshold and not above it, mixed rungs in one multipart request, the
budget skip, a named model's budget as its deadline, overload of the deep rung, and the metrics."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from .colour_models import (
    AMBIGUOUS, CLEAR, DEEP, SHALLOW, expected_probabilities, png, write_cascade_file, write_ladder, write_model,
)  # fmt: skip
from .conftest import start_server

PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def auto_server(tmp_path_factory):
    """Calibrated at max_softmax 0.9; a 1 s batching delay makes the deep rung's expected completion
    at least 1 s (cascade.Cascade.expected_seconds), so a smaller budget skips the escalation.
    The delay itself costs nothing here: with no other image on its way a batch starts at once."""
    folder = write_ladder(tmp_path_factory.mktemp("auto"))
    write_cascade_file(folder, thresholds=(0.9,))
    flags = ("--providers", "cpu", "--max-delay-ms", "1000")
    server = start_server(folder, tmp_path_factory.mktemp("auto-server"), *flags)
    yield server
    server.stop()


def classify(server, image: bytes, **params) -> httpx.Response:
    return httpx.post(server.url + "/classify", content=image, params=params, headers=PNG, timeout=30)


def test_a_sure_image_stays_on_the_shallow_rung(auto_server):
    response = classify(auto_server, png(CLEAR[1]), model="auto")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "resnet18" and body["predictions"][0]["label"] == "green"
    assert body["cascade"]["path"] == ["resnet18"] and body["cascade"]["threshold"] == 0.9
    assert body["cascade"]["confidence"] > 0.99 and body["cascade"]["signal"] == "max_softmax"
    assert "escalation_skipped" not in body["cascade"] and "calibrated" not in body["cascade"]  # default True


def test_an_unsure_image_escalates_and_the_deeper_answer_stands(auto_server):
    colour = AMBIGUOUS[1]
    shallow = expected_probabilities(colour, *SHALLOW[1:])
    assert shallow.argmax() == 0 and shallow.max() < 0.9  # the shallow model would say red, unsure
    response = httpx.post(auto_server.url + "/models/auto/classify", content=png(colour), headers=PNG, timeout=30)
    body = response.json()
    assert body["model"] == "resnet50" and body["predictions"][0]["label"] == "green"
    assert body["cascade"]["path"] == ["resnet18", "resnet50"] and "threshold" not in body["cascade"]
    deep = expected_probabilities(colour, *DEEP[1:])
    assert abs(body["predictions"][0]["probability"] - deep[1]) < 1e-4
    assert abs(body["cascade"]["confidence"] - deep.max()) < 1e-4


def test_images_of_one_upload_end_on_different_rungs(auto_server):
    colours = [CLEAR[0], AMBIGUOUS[2], CLEAR[2], AMBIGUOUS[1]]
    files = [("images", (f"{i}.png", png(c), "image/png")) for i, c in enumerate(colours)]
    response = httpx.post(auto_server.url + "/classify", params={"model": "auto", "top_k": 1}, files=files, timeout=30)
    body = response.json()
    assert body["model"] == "auto"
    assert [r["model"] for r in body["results"]] == ["resnet18", "resnet50", "resnet18", "resnet50"]
    assert [r["predictions"][0]["label"] for r in body["results"]] == ["red", "blue", "blue", "green"]
    assert [len(r["cascade"]["path"]) for r in body["results"]] == [1, 2, 1, 2]


def test_an_escalation_that_does_not_fit_the_budget_is_skipped_and_says_so(auto_server):
    image = png(AMBIGUOUS[1])
    body = classify(auto_server, image, model="auto", budget_ms=500).json()
    assert body["model"] == "resnet18" and body["predictions"][0]["label"] == "red"  # the shallow answer
    assert body["cascade"]["path"] == ["resnet18"] and body["cascade"]["escalation_skipped"] == "budget"
    assert body["cascade"]["confidence"] == pytest.approx(expected_probabilities(AMBIGUOUS[1], *SHALLOW[1:]).max())
    body = classify(auto_server, image, model="auto", budget_ms=20_000).json()  # room for it: escalates
    assert body["model"] == "resnet50" and body["cascade"]["path"] == ["resnet18", "resnet50"]


def test_a_named_model_takes_the_budget_as_its_deadline(auto_server):
    response = classify(auto_server, png(CLEAR[0]), model="resnet50", budget_ms=0.001)
    assert response.status_code == 504 and "budget_ms = 0.001" in response.json()["error"]["message"]
    assert classify(auto_server, png(CLEAR[0]), model="resnet50", budget_ms=20_000).status_code == 200
    assert classify(auto_server, png(CLEAR[0]), model="auto", budget_ms=0).status_code == 422


def test_get_models_and_metrics_report_the_cascade(auto_server):
    body = httpx.get(auto_server.url + "/models").json()
    assert body["auto"]["calibrated"] is True and body["auto"]["calibration"].endswith("cascade.json")
    assert [(r["name"], r["threshold"], r["gflops"]) for r in body["ladder"]] == [
        ("resnet18", 0.9, 1e-8), ("resnet50", None, 1e-8)
    ]  # fmt: skip
    classify(auto_server, png(AMBIGUOUS[2]), model="auto")
    text = httpx.get(auto_server.url + "/metrics").text
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(samples['resnet_cascade_answers_total{model="resnet50"}']) >= 1
    assert float(samples['resnet_cascade_escalations_total{model="resnet18",to="resnet50"}']) >= 1
    assert float(samples['resnet_cascade_confidence_count{model="resnet18"}']) >= 1
    assert float(samples['resnet_requests_total{model="auto",status="200"}']) >= 1
    assert np.isfinite(float(samples['resnet_cascade_confidence_sum{model="resnet50"}']))


def test_when_the_deep_rung_is_full_auto_answers_from_the_shallow_one(tmp_path):
    """The deep model is made slow by a known amount of work (a 512 px input and a convolution, 0.45
    GMAC per image, colour_models.write_model) and its queue is filled by a request naming it: 12
    images, one per batch, hold it full for seconds."""
    write_model(tmp_path, *SHALLOW)
    write_model(tmp_path, *DEEP, side=512)  # other preprocessing: escalations are prepared again for it
    write_cascade_file(tmp_path, thresholds=(0.9,))
    flags = ("--providers", "cpu", "--queue-size", "12", "--max-images", "12", "--max-batch-size", "1")
    server = start_server(tmp_path, tmp_path, *flags, "--intra-op-threads", "1", "--warmup-runs", "1")
    try:
        files = [("images", (f"{i}.png", png(CLEAR[i % 3]), "image/png")) for i in range(12)]
        with ThreadPoolExecutor(1) as pool:
            filling = pool.submit(httpx.post, server.url + "/models/resnet50/classify", files=files, timeout=60)
            deadline = time.monotonic() + 30
            while 'resnet_queue_depth{model="resnet50"} 12' not in httpx.get(server.url + "/metrics").text:
                assert time.monotonic() < deadline and not filling.done()
                time.sleep(0.01)
            body = classify(server, png(AMBIGUOUS[1]), model="auto").json()
            refused = classify(server, png(CLEAR[0]), model="resnet50")  # naming a model: today's 503
            assert filling.result().status_code == 200
        assert body["model"] == "resnet18" and body["cascade"]["escalation_skipped"] == "overloaded"
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        body = classify(server, png(AMBIGUOUS[1]), model="auto").json()  # room again: escalates
        assert body["model"] == "resnet50" and body["predictions"][0]["label"] == "green"
        text = httpx.get(server.url + "/metrics").text
        assert 'resnet_cascade_escalations_skipped_total{model="resnet18",reason="overloaded"} 1' in text
    finally:
        server.stop()


def test_with_three_rungs_each_rung_applies_its_own_threshold(tmp_path):
    """resnet18 -> resnet34 -> resnet50 with thresholds 0.97 and 0.8 (a cascade file may carry one per
    rung but the last; resnet-calibrate writes one shared value, docs/cascade.md). The middle model
    is the shallow one without its red bias: better, not yet sure. One image stops on each rung,
    and the middle one stops only because the middle rung's own 0.8 applies, not the first's 0.97."""
    middle = ("resnet34", SHALLOW[1], (0.0, 0.0, 0.0))
    for name, gain, bias in (SHALLOW, middle, DEEP):
        write_model(tmp_path, name, gain, bias)
    write_cascade_file(tmp_path, thresholds=(0.97, 0.8), rungs=("resnet18", "resnet34", "resnet50"))
    sure, fairly, unsure = CLEAR[1], (110, 140, 40), AMBIGUOUS[1]  # green leads red by 190, 30, 10 levels
    confidence = {colour: [expected_probabilities(colour, *m[1:]).max() for m in (SHALLOW, middle)]
                  for colour in (sure, fairly, unsure)}  # fmt: skip
    assert confidence[sure][0] >= 0.97 and confidence[fairly][0] < 0.97 and confidence[unsure][0] < 0.97
    assert 0.8 <= confidence[fairly][1] < 0.97 and confidence[unsure][1] < 0.8
    server = start_server(tmp_path, tmp_path, "--providers", "cpu")
    try:
        files = [("images", (f"{i}.png", png(c), "image/png")) for i, c in enumerate((sure, fairly, unsure))]
        body = httpx.post(server.url + "/classify", params={"model": "auto"}, files=files, timeout=30).json()
        assert [r["model"] for r in body["results"]] == ["resnet18", "resnet34", "resnet50"]
        assert [r["cascade"]["path"] for r in body["results"]] == [
            ["resnet18"], ["resnet18", "resnet34"], ["resnet18", "resnet34", "resnet50"]
        ]  # fmt: skip
        assert [r["cascade"].get("threshold") for r in body["results"]] == [0.97, 0.8, None]
        assert [r["predictions"][0]["label"] for r in body["results"]] == ["green"] * 3
        ladder = httpx.get(server.url + "/models").json()["ladder"]
        assert [(r["name"], r["threshold"]) for r in ladder] == [
            ("resnet18", 0.97), ("resnet34", 0.8), ("resnet50", None)
        ]  # fmt: skip
    finally:
        server.stop()
