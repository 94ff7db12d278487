"""The depth ladder: the default rule, --ladder and its refusals, depth= on real servers, the default
model when none is configured, and the cascade file's refusals at start-up (one line, exit 2)."""

from __future__ import annotations

import shutil

import httpx
import pytest

from service.depth import cascade_file, ladder as ladders
from service.depth.cascade import default_policy
from service.cli import main
from service.config import ServeConfig
from service.engine.runtime import load_models

from .colour_models import CLEAR, DEEP, SHALLOW, png, write_cascade_file, write_ladder, write_model
from .conftest import start_server

PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def ladder_dir(tmp_path_factory):
    return write_ladder(tmp_path_factory.mktemp("ladder"))


@pytest.fixture(scope="module")
def ladder_server(ladder_dir, tmp_path_factory):
    server = start_server(ladder_dir, tmp_path_factory.mktemp("ladder-server"), "--providers", "cpu")
    yield server
    server.stop()


def loaded(folder, **settings):
    return load_models(ServeConfig(models=folder, providers=("cpu",), **settings))


def test_the_default_ladder_takes_one_model_per_depth_fastest_on_the_cpu_first(tmp_path):
    write_ladder(tmp_path)
    write_model(tmp_path, "resnet18-int8", *SHALLOW[1:], arch="resnet18", precision="int8")
    write_model(tmp_path, "resnet18-fp16", *SHALLOW[1:], arch="resnet18", precision="fp16")
    write_model(tmp_path, "resnet50-fp16", *DEEP[1:], arch="resnet50", precision="fp16")
    write_model(tmp_path, "resnet34", *SHALLOW[1:], classes=(("a", "a"), ("b", "b"), ("c", "c")))
    ladder = ladders.build(loaded(tmp_path))
    # int8 beats fp32 beats fp16 on the CPU; resnet34 has other classes, so it stays off the ladder
    assert ladder.rungs == ("resnet18-int8", "resnet50") and ladder.depths == (18, 50)
    assert ladder.default_model == "resnet18-int8" and ladder.rule == "fastest variant per depth"
    assert ladders.build(loaded(tmp_path), ("resnet50", "resnet18")).rungs == ("resnet18", "resnet50")


@pytest.mark.parametrize(
    "names, message",
    [
        (("resnet18", "resnet152"), "--ladder names resnet152, not served; served: resnet18, resnet18-int8, resnet34"),
        (("resnet18", "resnet18-int8"), "--ladder has two models of depth 18: resnet18 and resnet18-int8"),
        (("resnet18", "resnet34"), "--ladder mixes class lists: resnet34 has 3 classes (a, ...)"),
    ],
)
def test_a_bad_ladder_refuses_to_start_with_one_line(tmp_path, capsys, names, message):
    write_model(tmp_path, *SHALLOW)
    write_model(tmp_path, "resnet18-int8", *SHALLOW[1:], arch="resnet18", precision="int8")
    write_model(tmp_path, "resnet34", *SHALLOW[1:], classes=(("a", "a"), ("b", "b"), ("c", "c")))
    assert main(["--models", str(tmp_path), "--providers", "cpu", "--ladder", ",".join(names)]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the JSON log lines of the models loaded
    assert last.startswith("resnet-serve: ") and message in last


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ladder": ["resnet18", "resnet101"]}, "names resnet101, not served here"),
        ({"thresholds": [0.5, 0.7]}, "needs 1 numeric thresholds"),
        ({"signal": "vibes"}, "names the signal 'vibes'"),
        ({"format_version": 99}, "has format_version 99"),
        ({"models": {"resnet18": {"sha256": "ab" * 32}, "resnet50": {"sha256": "cd" * 32}}},
         "was measured on another resnet18 file"),
    ],
)  # fmt: skip
def test_a_stale_or_bad_cascade_file_refuses_to_start_and_names_the_fix(tmp_path, capsys, change, message):
    write_ladder(tmp_path)
    write_cascade_file(tmp_path, **change)
    assert main(["--models", str(tmp_path), "--providers", "cpu"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("resnet-serve: ") and "cascade file" in last and message in last
    assert f"resnet-calibrate --models {tmp_path}" in last


def test_a_cascade_file_for_another_ladder_refuses_to_start(tmp_path, capsys):
    write_ladder(tmp_path)
    write_model(tmp_path, "resnet18-int8", *SHALLOW[1:], arch="resnet18", precision="int8")
    write_cascade_file(tmp_path)  # measured on resnet18 -> resnet50; the default ladder now takes the int8
    assert main(["--models", str(tmp_path), "--providers", "cpu"]) == 2
    assert "measured on the ladder resnet18,resnet50, the service's ladder is resnet18-int8,resnet50" in (
        capsys.readouterr().err
    )


def test_depth_picks_the_rung_and_get_models_shows_the_ladder(ladder_server):
    body = httpx.get(ladder_server.url + "/models").json()
    assert body["default_model"] == "resnet18"  # no --default-model: the shallowest rung
    assert [(r["name"], r["depth"], r["precision"], r["threshold"]) for r in body["ladder"]] == [
        ("resnet18", 18, "fp32", 0.5), ("resnet50", 50, "fp32", None)
    ]  # fmt: skip
    assert all(r["batch_ms"] > 0 and r["gflops"] is None for r in body["ladder"])
    assert body["auto"] == {"signal": "max_softmax", "calibrated": False, "calibration": None}
    assert body["ladder_rule"] == "fastest variant per depth"
    image = png(CLEAR[1])
    asks = (({"depth": 50}, "resnet50"), ({}, "resnet18"), ({"model": "resnet50", "depth": 50}, "resnet50"))
    for params, model in asks:
        response = httpx.post(ladder_server.url + "/classify", content=image, params=params, headers=PNG, timeout=30)
        assert response.status_code == 200 and response.json()["model"] == model
        assert response.json()["predictions"][0]["label"] == "green" and "cascade" not in response.json()


def test_an_unknown_depth_is_a_404_listing_the_depths_and_a_disagreement_a_422(ladder_server):
    image = png(CLEAR[0])
    response = httpx.post(ladder_server.url + "/classify", content=image, params={"depth": 34}, headers=PNG, timeout=30)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_depth" and error["depths"] == [18, 50] and "depths: 18, 50" in error["message"]
    for params in ({"model": "resnet18", "depth": 50}, {"model": "auto", "depth": 18}):
        response = httpx.post(ladder_server.url + "/classify", content=image, params=params, headers=PNG, timeout=30)
        assert response.status_code == 422 and response.json()["error"]["parameter"] == "depth"
    url = ladder_server.url + "/models/resnet50/classify"
    response = httpx.post(url, content=image, params={"depth": 18}, headers=PNG)
    assert response.status_code == 422


def test_a_folder_without_resnet18_serves_without_flags(ladder_dir, tmp_path):
    shutil.copytree(ladder_dir / "resnet50", tmp_path / "resnet50")
    models = loaded(tmp_path)  # no --default-model: nothing to refuse
    ladder = ladders.build(models)
    assert ladder.default_model == "resnet50" and ladder.rungs == ("resnet50",)
    assert cascade_file.read(tmp_path, ladder, models) == default_policy(ladder)  # no thresholds: one rung
