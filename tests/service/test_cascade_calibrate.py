"""resnet-calibrate on a labelled folder whose outcome is known (colour_models.py): the shallow model
is wrong exactly on the ambiguous images and unsure there, the deep one always right. So the chosen
threshold must escalate exactly the ambiguous images, on both halves, and the service must read it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.depth import cascade_file, ladder as ladders
from service.depth.calibrate import gflops, main
from service.config import ServeConfig
from service.engine.runtime import load_models

from .colour_models import write_image_folder, write_ladder

CLEAR, AMBIGUOUS = 8, 6  # per class: 24 clear images (all right), 12 ambiguous (the shallow model's errors)


def test_the_calibrator_escalates_exactly_the_shallow_models_mistakes(tmp_path, capsys):
    models, data = write_ladder(tmp_path / "models"), write_image_folder(tmp_path / "data", CLEAR, AMBIGUOUS)
    assert main(["--models", str(models), "--data", str(data), "--seed", "3"]) == 0
    written = json.loads((models / "cascade.json").read_text())
    assert written["ladder"] == ["resnet18", "resnet50"] and written["data"]["images"] == 36
    assert written["data"]["calibration"] == written["data"]["held_out"] == 18
    for half in ("calibration", "held_out"):
        singles = written["singles"][half]
        chosen = written["chosen"][half]
        wrong = 1 - singles["resnet18"]["top1"] / 100  # the shallow model's errors: the ambiguous share
        assert singles["resnet50"]["top1"] == 100.0 and chosen["top1"] == 100.0
        assert np.isclose(chosen["escalation_rate"], wrong, atol=1e-4)
        assert chosen["share_per_rung"][1] == chosen["escalation_rate"]
        assert chosen["gflops"] < 2 * singles["resnet50"]["gflops"]
        for signal, curves in written["curves"].items():
            ends = sorted(curves[half], key=lambda p: p["threshold"])
            assert ends[0]["escalation_rate"] == 0 and ends[0]["top1"] == singles["resnet18"]["top1"], signal
            assert ends[-1]["escalation_rate"] == 1 and ends[-1]["top1"] == 100.0, signal
    with Image.open(models / "cascade.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 200
    assert "| auto (" in capsys.readouterr().out
    # The service reads what was written: calibrated, with the chosen signal and threshold.
    loaded = load_models(ServeConfig(models=models, providers=("cpu",)))
    policy = cascade_file.read(models, ladders.build(loaded), loaded)
    assert policy.calibrated and (policy.signal, policy.thresholds) == (written["signal"], tuple(written["thresholds"]))


def test_the_calibrator_refuses_bad_input_with_one_line(tmp_path, capsys):
    models = write_ladder(tmp_path / "models")
    (tmp_path / "data" / "val" / "purple").mkdir(parents=True)
    assert main(["--models", str(models), "--data", str(tmp_path / "data")]) == 2
    assert "'purple' is not one of the models' class ids" in capsys.readouterr().err.splitlines()[-1]
    assert main(["--models", str(models), "--images", "1"]) == 2
    assert not (models / "cascade.json").exists()


def test_the_calibrator_runs_the_trained_models_on_the_synthetic_set(tiny_models_dir, tmp_path):
    """The shared tiny models (resnet18 and resnet20, trained on the synthetic set): the synthetic
    source, GFLOPs counted from real ResNet graphs, and curves whose ends are the single models."""
    models = Path(shutil.copytree(tiny_models_dir, tmp_path / "models"))  # the shared folder stays without a file
    assert main(["--models", str(models), "--data", "synthetic", "--images", "200"]) == 0
    written = json.loads((models / "cascade.json").read_text())
    assert written["ladder"] == ["resnet18", "resnet20"] and written["data"]["images"] == 200
    for name in written["ladder"]:
        recorded = written["models"][name]["gflops"]
        assert recorded > 0 and recorded == pytest.approx(gflops(models / name / "model.onnx"), rel=1e-5)
    for half in ("calibration", "held_out"):
        singles = written["singles"][half]
        for curve in written["curves"].values():
            ends = sorted(curve[half], key=lambda p: p["threshold"])
            assert (ends[0]["top1"], ends[0]["gflops"]) == (singles["resnet18"]["top1"], singles["resnet18"]["gflops"])
            assert ends[-1]["top1"] == singles["resnet20"]["top1"] and ends[-1]["escalation_rate"] == 1
    best = max(s["top1"] for s in written["singles"]["calibration"].values())
    assert written["chosen"]["calibration"]["top1"] >= best - 0.5
