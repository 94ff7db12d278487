"""resnet-calibrate on a labelled folder whose outcome is known (colour_models.py): the shallow model
is wrong exactly on the ambiguous images and unsure there, the deep one always right. So the chosen
threshold must escalate exactly the ambiguous images, on both halves, and the service must read it."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from service import cascade_file, ladder as ladders
from service.calibrate import main
from service.config import ServeConfig
from service.runtime import load_models

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
