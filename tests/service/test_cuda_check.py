"""bench/gpu/check.py without a GPU: one clear line and exit 2 for the GPU run, and the whole check
run for real in its --device cpu --smoke mode on the tiny models, so that the script the next lent GPU
runs has run here first: every phase, the engine variants, resumption. No timings are asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bench.gpu import diagnose
from service.engine import cuda


def _check(*flags: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.gpu.check", *flags], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(cuda.probe().usable, reason="this machine has a GPU: the check would run for minutes")
def test_gpu_check_degrades_clearly_without_a_gpu(tmp_path):
    out = tmp_path / "gpu"
    done = _check("--out", str(out))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no usable NVIDIA GPU ("), done.stderr
    assert not out.exists()


def test_an_unknown_phase_is_refused_in_one_line(tmp_path):
    done = _check("--device", "cpu", "--out", str(tmp_path / "gpu"), "--skip", "export,warp")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gpu-check: --skip names no phase warp; phases: export,raw,diagnose,decode,service,train,cli-train"
    ]


def test_the_smoke_run_measures_every_phase_then_resumes_without_repeating_them(tiny_models_dir, tmp_path):
    out = tmp_path / "gpu"
    flags = ("--device", "cpu", "--smoke", "--out", str(out), "--models", str(tiny_models_dir), "--skip", "export",
             "--diagnose-models", "resnet20", "--service-models", "resnet18")  # fmt: skip
    done = _check(*flags, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["errors"] == {}, results["errors"]
    assert {"raw", "diagnose", "decode", "service", "service_variants"} <= set(results)
    assert "export" not in results and "train" not in results  # skipped, and training only with --train
    assert {p["batch"] for p in results["raw"]["points"]} == {1, 2, 4}
    assert set(results["raw"]["sized_vs_plain_max_abs_diff"].values()) == {0.0}
    assert results["decode"]["images_per_s"] > 0 and results["decode"]["threads"] >= 1
    cases = results["diagnose"]["models"]["resnet20"]["cases"]
    assert list(cases) == list(diagnose.CASES)
    assert cases["graphs"] == {"skipped": "CUDA graphs need the CUDA provider"}
    assert cases["old_ladder"]["shared"] and not cases["per_size"]["shared"] and cases["single_size"]["sizes"] == [8]
    for case in ("old_ladder", "per_size", "single_size"):
        cycle = cases[case]["cycle"]
        assert cycle["batches"] >= 2 * len(results["diagnose"]["cycle"]) and cycle["images_per_s"] > 0
        assert set(cycle["per_size"]) == {str(n) for n in results["diagnose"]["cycle"]}
        assert 0 < cycle["cpu_over_wall"] and cases[case]["device_memory_mib"] is None
    assert cases["coarse"]["sizes"] == [1, 8] and not cases["coarse"]["shared"]
    explain = results["raw"]["explain"]["resnet18"]
    assert explain["bound"] and set(explain["costs"]) == {"1", "2"}
    assert all(c["classify_ms"] > 0 and c["explain_ms"] > 0 for c in explain["costs"].values())
    old = "--cuda-sessions shared --no-cuda-prefer-nhwc --cuda-batch-sizes 1,2,4,8,16,32,64,128"
    variants = results["service_variants"]
    assert list(variants) == ["", old]
    for run in variants.values():
        assert {r["concurrency"] for r in run["service"]} == {1, 2} and all(r["images_per_s"] > 0 for r in run["service"])
        assert {r["payload"] for r in run["service"]} == {"pixels", "pixels8", "photo"}
    assert "--sized-on-cpu" in variants[""]["command"]
    assert "--cuda-batch-sizes 1,2,4,8" in variants[old]["command"]
    # Eight images in each request: the load generator counts images, not requests.
    (eight,) = [r for r in variants[""]["service"] if r["payload"] == "pixels8" and r["concurrency"] == 1]
    assert eight["images_per_s"] == pytest.approx(8 * eight["requests"] / eight["window_s"], rel=0.01)
    table = (out / "table.md").read_text()
    assert "## Diagnose" in table and "### resnet20" in table and "## JPEG-decode ceiling" in table
    assert sum(1 for path in out.rglob("*") if path.is_file()) <= 7  # + log.txt: the device returns 8 files at most

    again = _check(*flags, timeout=300)  # everything finished: a rerun measures nothing again
    assert again.returncode == 0, again.stderr[-3000:]
    skipped = [line for line in again.stderr.splitlines() if "done in an earlier run, skipped" in line]
    assert len(skipped) == 5, again.stderr  # raw, diagnose, decode and both service variants
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["meta"]["runs"] == 2 and rerun["raw"] == results["raw"]


def test_a_spent_budget_starts_no_phase(tmp_path):
    done = _check("--device", "cpu", "--out", str(tmp_path / "gpu"), "--budget-s", "-1")
    assert done.returncode == 0, done.stderr
    assert "export: not started, past --budget-s -1" in done.stderr and "raw" not in done.stderr
    assert set(json.loads((tmp_path / "gpu" / "results.json").read_text())) >= {"meta", "errors", "targets"}


def test_the_explanations_report_compares_each_fp16_model_with_its_fp32_twin():
    from bench.gpu import phases
    from bench.gpu.report import explain_table

    rng = np.random.default_rng(0)
    maps = rng.random((4, 2, 3, 3))
    full = {"cam": maps, "cam_classes": np.array([[1, 0], [0, 1], [2, 1], [1, 2]]), "embedding": rng.random((4, 5))}
    half = {**full, "cam": maps.copy(), "cam_classes": full["cam_classes"].copy()}
    half["cam"][0, 0] = half["cam"][0, 0][::-1, ::-1]  # image 0's top map peaks elsewhere
    half["cam_classes"][1] = [3, 4]  # image 1: fp32's top class is not among fp16's maps
    costs = {"1": {"classify_ms": 1.0, "explain_ms": 1.1}}
    explain = {name: {"bound": True, "costs": costs, "probe": {k: v.tolist() for k, v in probe.items()}}
               for name, probe in (("resnet18", full), ("resnet18-fp16", half))}
    report = phases._explain_report(explain)
    assert "against_fp32" not in report["resnet18"] and "probe" not in report["resnet18-fp16"]
    twin = report["resnet18-fp16"]["against_fp32"]
    assert twin["images"] == 4 and twin["maps_compared"] == 3 and twin["map_peak_agreement"] == round(2 / 3, 4)
    assert twin["map_max_abs_diff_normalised"] > 0 and twin["embedding_cosine_min"] == 1.0
    table = "\n".join(explain_table(report))
    assert "| resnet18-fp16 | 1.00 / 1.10 | map peaks agree 67% of 3" in table
