"""The GPU page's study and picture, run on the CPU: N resnet-serve processes each answer their own
load generator and the study adds them up; the summary plot draws from the committed GPU results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_replicas_start_n_processes_and_add_up_their_answers(tiny_models_dir, tmp_path):
    out = tmp_path / "replicas"
    done = subprocess.run(
        [sys.executable, "-m", "bench.studies.replicas", "--models", str(tiny_models_dir), "--model", "resnet20",
         "--replicas", "1,2", "--concurrency", "4", "--payload", "pixels8", "--warmup-s", "0.3", "--duration-s", "0.5",
         "--out", str(out), "--", "--providers", "cpu"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["payload"] == "pixels8" and [row["replicas"] for row in result["rows"]] == [1, 2]
    two = result["rows"][1]
    assert two["concurrency_each"] == 2 and len(two["per_replica"]) == 2
    assert all(r["images_per_s"] > 0 and r["errors"] == {} for r in two["per_replica"])
    assert two["images_per_s"] == round(sum(r["images_per_s"] for r in two["per_replica"]), 1)
    assert len(list((out / "logs").glob("*/resnet-serve.log"))) == 3  # one log per process: 1 + 2


def test_a_replica_count_that_is_not_a_number_exits_2(tiny_models_dir, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench.studies.replicas", "--models", str(tiny_models_dir), "--model", "resnet20",
         "--replicas", "two", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "replicas: --replicas must be comma-separated integers, got 'two'"


def test_the_gpu_summary_draws_from_the_committed_results(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu.summary", str(REPO / "docs/gpu/run4/results.json"),
         str(REPO / "docs/gpu/replicas"), str(tmp_path / "serving.png")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "serving.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
