"""resnet-bench --rounds: medians over interleaved rounds, and the raw reference's input."""

from __future__ import annotations

import numpy as np
import pytest

from bench import ratio
from bench.config import BenchError, parse


def _round(model: str, raw: float, service: float, batch: int = 32, served: float | None = None) -> ratio.Round:
    return ratio.Round(model, raw, batch, service, 50.0, 0.3, 1.5, 2.0, served)


def test_the_summary_is_the_ratio_of_the_medians_with_the_spread_of_the_rounds():
    rounds = [_round("a", 100.0, 70.0, served=80.0), _round("b", 10.0, 9.0, 8), _round("a", 120.0, 60.0, 16, 90.0),
              _round("a", 90.0, 90.0, served=70.0)]
    (a, b) = ratio.summary(rounds)
    assert (a["model"], a["rounds"], a["raw_images_per_s"], a["service_images_per_s"]) == ("a", 3, 100.0, 70.0)
    assert (a["ratio"], a["ratio_min"], a["ratio_max"], a["raw_best_batches"]) == (0.7, 0.5, 1.0, [16, 32])
    assert (b["ratio"], b["client_cpu_cores"], b["server_cpu_cores"], b["mean_batch"]) == (0.9, 0.3, 1.5, 2.0)
    table = ratio.table([a, b], 8)
    assert "service img/s (c=8)" in table and "| a | 70.0 | 100.0 (16,32) | 0.70 (0.50-1.00) |" in table
    # the gap split in two: reference -> as served (batch, options), as served -> service (its own work)
    assert a["served_raw_images_per_s"] == 80.0 and "| 80.0 | 0.80 | 0.88 |" in table
    assert b["served_raw_images_per_s"] is None and "| - | - | - |" in table


def test_raw_onnx_runtime_is_timed_on_the_payloads_as_the_model_takes_them(tiny_models_dir, tmp_path):
    from PIL import Image

    files = []
    for i, colour in enumerate(("red", "blue")):
        files.append(tmp_path / f"photo-{i}.jpg")
        Image.new("RGB", (50, 40), colour).save(files[-1])
    speed, batch = ratio.raw_best(tiny_models_dir / "resnet18" / "model.onnx", files, 10**7, seconds=0.01)
    assert speed > 0 and batch in ratio.BATCHES and np.isfinite(speed)


def test_rounds_must_not_be_negative():
    assert parse(["--rounds", "3"]).rounds == 3 and parse([]).rounds == 0
    with pytest.raises(BenchError, match="rounds"):
        parse(["--rounds", "-1"])


def test_rounds_run_end_to_end_and_write_the_table(tiny_models_dir, tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "ratio"
    command = [sys.executable, "-m", "bench.cli", "--models", str(tiny_models_dir), "--only", "resnet20,resnet18",
               "--rounds", "2", "--duration-s", "0.5", "--warmup-s", "0.3", "--raw-seconds", "0.02", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "ratio.json").read_text())
    assert [(r["model"], r["rounds"]) for r in results["summary"]] == [("resnet20", 2), ("resnet18", 2)]
    assert all(r["served_raw_images_per_s"] > 0 for r in results["rounds"])
    # interleaved: round 1 of every model comes before round 2 of any
    assert [r["model"] for r in results["rounds"]] == ["resnet20", "resnet18"] * 2
    assert results["meta"]["concurrency"] == 8
    assert "| resnet20 |" in (out / "ratio.md").read_text() and "round 2/2 resnet18" in done.stderr


def test_rounds_on_the_pixels_payload_post_the_model_input_over_the_open_inference_protocol(tiny_models_dir, tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "ratio"
    command = [sys.executable, "-m", "bench.cli", "--models", str(tiny_models_dir), "--only", "resnet18",
               "--payloads", "pixels", "--rounds", "1", "--duration-s", "0.5", "--warmup-s", "0.3",
               "--raw-seconds", "0.02", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "ratio.json").read_text())
    assert results["meta"]["payload"] == "pixels" and results["rounds"][0]["service_images_per_s"] > 0
    written = sorted(p.name for p in (out / "payloads").glob("pixels-*.npy"))
    assert written == [f"pixels-resnet18-{i}.npy" for i in range(3)]
    assert "payload pixels" in (out / "ratio.md").read_text()


def test_rounds_refuse_the_12mp_payload(tiny_models_dir, tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "bench.cli", "--models", str(tiny_models_dir), "--payloads", "12mp",
               "--rounds", "1", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--rounds measures the photo or pixels payload" in done.stderr, done.stderr
