"""bench/gpu_check.py without a GPU: one clear line and exit 2 for the device check, and its
diagnose phase (bench/gpu_diagnose.py) run for real on ONNX Runtime's CPU provider, so that the
code the next lent GPU runs has run here first. No timings are asserted: only the report's shape."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import gpu_diagnose
from service.engine import cuda

SKIP_ALL_BUT_DIAGNOSE = "export,raw,service,train,cli-train"


def _check(*flags: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", *flags], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(cuda.probe().usable, reason="this machine has a GPU: the check would run for minutes")
def test_gpu_check_degrades_clearly_without_a_gpu(tmp_path):
    out = tmp_path / "gpu"
    done = _check("--out", str(out))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no usable NVIDIA GPU ("), done.stderr
    assert not out.exists()


def test_the_cpu_device_runs_only_the_diagnose_phase(tmp_path):
    out = tmp_path / "gpu"
    done = _check("--device", "cpu", "--out", str(out), "--skip", "export,train")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gpu-check: --device cpu runs only the diagnose phase; add --skip raw,service,cli-train"
    ]
    assert not out.exists()


def test_diagnose_on_the_cpu_provider_reports_every_case_for_every_model(tiny_models_dir, tmp_path):
    out = tmp_path / "gpu"
    done = _check("--device", "cpu", "--out", str(out), "--models", str(tiny_models_dir), "--skip", SKIP_ALL_BUT_DIAGNOSE,
                  "--diagnose-models", "resnet18,resnet20", "--diagnose-seconds", "0.05", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["errors"] == {} and set(results) >= {"meta", "diagnose", "seconds", "targets"}
    diagnose = results["diagnose"]
    assert diagnose["device"] == "cpu" and list(diagnose["models"]) == ["resnet18", "resnet20"]
    cases = ["fixed", *gpu_diagnose.SUSPECTS]
    for name, model in diagnose["models"].items():
        assert model["providers"] == ["CPUExecutionProvider"]
        assert list(model["cases"]) == cases, name
        for case, r in model["cases"].items():
            assert "error" not in r, (name, case, r)
            assert r["runs"] >= gpu_diagnose.MIN_RUNS and r["images_per_s"] > 0 and r["x_fixed"] > 0
            assert 0 < r["p50_ms"] <= r["p90_ms"] and min(r["copy_in_ms"], r["compute_ms"], r["copy_out_ms"]) >= 0
        c = model["cases"]
        assert c["fixed"]["x_fixed"] == 1.0
        sizes = c["mixed"]["sizes"]
        assert list(sizes) == [str(n) for n in gpu_diagnose.MIXED_CYCLE] and c["mixed"]["runs"] % len(sizes) == 0
        assert all(s["rung"] == cuda.ladder_size(int(n)) and s["fixed_p50_ms"] > 0 for n, s in sizes.items())
        assert c["mixed"]["x_same_sizes"] > 0
        assert c["threads"]["distinct_threads"] == gpu_diagnose.THREADS
        assert c["loaded"]["decode_threads"] >= 1 and c["loaded"]["decodes_per_s"] > 0
        assert c["session"]["providers"] == ["CPUExecutionProvider"] and c["session"]["serving_x_default"] > 0
        batcher = c["batcher"]
        assert sum(batcher["batch_sizes"].values()) == batcher["runs"] and 1 <= batcher["mean_batch"] <= 128
        assert set(model["slow"]) <= set(gpu_diagnose.SUSPECTS)
        assert model["suspects"] == [gpu_diagnose.SUSPECTS[case] for case in model["slow"]]
    table = (out / "table.md").read_text()
    assert "## Diagnose" in table and "### resnet18 (" in table and "### resnet20 (" in table
    assert sum(1 for path in out.rglob("*") if path.is_file()) <= 8  # the device returns 8 files at most
