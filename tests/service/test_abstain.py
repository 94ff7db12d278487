"""Abstention: the risk-coverage choice on known answers, resnet-calibrate writing it, and a real server
saying per answer whether to trust it, over /classify and the Open Inference Protocol."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from service.depth import abstain
from service.depth.calibrate import main

from .colour_models import AMBIGUOUS, CLEAR, SHALLOW, expected_probabilities, png, write_cascade_file, write_image_folder, write_ladder
from .conftest import start_server

PNG = {"Content-Type": "image/png"}


def test_the_chosen_threshold_is_the_lowest_whose_kept_answers_meet_the_target_risk():
    # Confidences 0.9..0.5 falling; the 3rd and 5th answers are wrong.
    probabilities = np.array([[c, 1 - c] for c in (0.9, 0.8, 0.7, 0.6, 0.55)])
    labels = np.array([0, 0, 1, 0, 1])
    thresholds, coverage, risk = abstain.risk_coverage(probabilities, labels)
    assert thresholds.tolist() == [0.9, 0.8, 0.7, 0.6, 0.55]
    assert coverage.tolist() == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert np.allclose(risk, [0, 0, 1 / 3, 1 / 4, 2 / 5])
    assert abstain.choose(probabilities, labels, 0.0) == 0.8
    assert abstain.choose(probabilities, labels, 0.25) == 0.6
    assert abstain.choose(probabilities, labels, 0.5) == 0.55
    wrong_first = np.array([1, 0, 0, 0, 0])  # the surest answer is wrong: no threshold reaches 0 risk
    assert abstain.choose(probabilities, wrong_first, 0.0) > 0.9
    assert abstain.at(probabilities, labels, 0.6) == {"coverage": 0.8, "risk": 0.25}


def test_a_verdict_says_why_and_an_uncalibrated_model_never_abstains():
    rule = abstain.Rule(0.75, 0.05)
    unsure, sure = abstain.judge(np.array([0.6, 0.4]), rule), abstain.judge(np.array([0.9, 0.1]), rule)
    assert unsure.abstained and "below 0.7500" in unsure.reason and "5%" in unsure.reason
    assert not sure.abstained and sure.threshold == 0.75
    none = abstain.judge(np.array([0.34, 0.33, 0.33]), None)
    assert not none.abstained and none.reason.startswith("uncalibrated")


def test_the_calibrator_writes_each_models_threshold_and_its_curve(tmp_path, capsys):
    models, data = write_ladder(tmp_path / "models"), write_image_folder(tmp_path / "data", 8, 6)
    assert main(["--models", str(models), "--data", str(data), "--seed", "3", "--target-risk", "0.0"]) == 0
    written = json.loads((models / "cascade.json").read_text())
    shallow, deep = written["abstain"]["resnet18"], written["abstain"]["resnet50"]
    assert shallow["signal"] == "max_softmax" and shallow["target_risk"] == 0.0
    # The shallow model is wrong exactly on the ambiguous images, where it is unsure: at zero risk
    # it keeps only the clear ones on the calibration half; the deep one is never wrong.
    assert shallow["calibration"]["risk"] == 0.0 and 0 < shallow["calibration"]["coverage"] < 1
    assert deep["calibration"] == {"coverage": 1.0, "risk": 0.0}
    assert len(shallow["curve"]["coverage"]) == len(shallow["curve"]["risk"]) >= 2
    with Image.open(models / "abstention.png") as plot:
        assert plot.format == "PNG"
    assert "| resnet18 |" in capsys.readouterr().out
    assert main(["--models", str(models), "--target-risk", "1.5"]) == 2


@pytest.fixture(scope="module")
def abstaining_server(tmp_path_factory):
    """The colour ladder with resnet18's threshold at 0.9 (its ambiguous answers fall below it) and
    none for resnet50: calibrated and uncalibrated side by side."""
    folder = write_ladder(tmp_path_factory.mktemp("abstain"))
    write_cascade_file(folder, thresholds=(0.9,), abstain={"resnet18": {"threshold": 0.9, "target_risk": 0.05}})
    server = start_server(folder, tmp_path_factory.mktemp("abstain-server"), "--providers", "cpu")
    yield server
    server.stop()


def classify(server, image: bytes, **params) -> httpx.Response:
    return httpx.post(server.url + "/classify", content=image, params=params, headers=PNG, timeout=30)


def test_an_unsure_answer_abstains_and_still_lists_its_predictions(abstaining_server):
    colour = AMBIGUOUS[1]
    body = classify(abstaining_server, png(colour), model="resnet18", abstain="true").json()
    assert body["abstained"] is True and len(body["predictions"]) == 3
    confidence = expected_probabilities(colour, *SHALLOW[1:]).max()
    assert body["abstention"]["confidence"] == pytest.approx(confidence, abs=1e-5)
    assert body["abstention"]["threshold"] == 0.9 and "below" in body["abstention"]["reason"]
    sure = classify(abstaining_server, png(CLEAR[1]), model="resnet18", abstain="true").json()
    assert sure["abstained"] is False
    assert "abstained" not in classify(abstaining_server, png(colour), model="resnet18").json()  # not asked


def test_an_uncalibrated_model_answers_false_with_the_reason(abstaining_server):
    body = classify(abstaining_server, png(AMBIGUOUS[1]), model="resnet50", abstain="true").json()
    assert body["abstained"] is False and body["abstention"]["reason"].startswith("uncalibrated")
    models = httpx.get(abstaining_server.url + "/models", timeout=10).json()["models"]
    assert {m["name"]: m["abstain_threshold"] for m in models} == {"resnet18": 0.9, "resnet50": None}


def test_in_the_cascade_the_answering_rung_judges(abstaining_server):
    files = [("images", (f"{i}.png", png(c), "image/png")) for i, c in enumerate([CLEAR[0], AMBIGUOUS[2]])]
    body = httpx.post(abstaining_server.url + "/classify", params={"model": "auto", "abstain": "true"}, files=files,
                      timeout=30).json()  # fmt: skip
    first, second = body["results"]
    assert first["model"] == "resnet18" and first["abstained"] is False and first["abstention"]["threshold"] == 0.9
    assert second["model"] == "resnet50" and second["abstention"]["reason"].startswith("uncalibrated")


def test_the_open_inference_protocol_carries_the_verdicts_as_parameters(abstaining_server):
    image = base64.b64encode(png(AMBIGUOUS[1])).decode()  # BYTES as JSON: base64 (docs/oip.md)
    request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}],
               "parameters": {"abstain": True}}  # fmt: skip
    url = abstaining_server.url + "/v2/models/resnet18/infer"
    response = httpx.post(url, content=json.dumps(request).encode(), timeout=30)
    assert response.status_code == 200, response.text
    parameters = response.json()["parameters"]
    assert parameters["abstained"] == [True] and "below" in parameters["abstention"][0]
    bad = httpx.post(url, content=json.dumps({**request, "parameters": {"abstain": "yes"}}).encode(), timeout=30)
    assert bad.status_code == 400 and "abstain" in bad.json()["error"]
