"""resnet-bench end to end on the tiny models: real resnet-serve, real load generator and baseline
processes, real JPEGs. Structure and sanity only; a benchmark's numbers are never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bench import load, payloads, raw, report
from service.config import ServeConfig
from service.metrics import Metrics

MAX_BATCH = 4  # the service's max batch in the end-to-end run: raw ORT sweeps 1, 2, 4


def _resnet_bench() -> list[str]:
    script = Path(sys.executable).with_name("resnet-bench")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bench.cli"]


@pytest.fixture(scope="module")
def bench_run(tiny_models_dir, tmp_path_factory):
    """One short run on resnet18 (32x32) with every payload, two levels and the eager baseline."""
    out = tmp_path_factory.mktemp("bench")
    command = [*_resnet_bench(), "--models", str(tiny_models_dir), "--only", "resnet18", "--out", str(out),
               "--concurrency", "1,3", "--baseline-concurrency", "2", "--warmup-s", "0.5", "--duration-s", "1.5",
               "--raw-seconds", "0.2", "--", "--max-batch-size", str(MAX_BATCH), "--max-delay-ms", "5",
               # One thread each (the baseline takes the service's): on a CI box busy with other tests,
               # two spinning OpenMP threads in torch can take seconds per image.
               "--intra-op-threads", "1", "--decode-threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done, json.loads((out / "results.json").read_text())


def test_a_run_measures_every_level_of_the_service_and_the_baseline(bench_run):
    _, _, results = bench_run
    levels = [(r["model"], r["payload"], r["concurrency"]) for r in results["service"]]
    assert levels == [("resnet18", p, c) for p in payloads.DEFAULT_KINDS for c in (1, 3)]
    # the baseline decodes image files itself: it has no pixel input
    assert [(r["payload"], r["concurrency"]) for r in results["baseline"]] == [(p, 2) for p in payloads.JPEGS]
    for r in results["service"] + results["baseline"]:
        assert r["requests"] > 0 and r["errors"] == {}
        assert r["images_per_s"] > 0 and r["latency_samples"] == r["requests"]
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["client_cpu_cores"] >= 0 and r["server_cpu_cores"] is not None
    for r in results["service"]:
        assert 1 <= r["mean_batch"] <= MAX_BATCH  # read from the service's own /metrics histogram
        assert r["x_raw_best"] > 0


def test_raw_onnx_runtime_is_swept_from_batch_1_to_the_service_maximum(bench_run):
    _, _, results = bench_run
    assert [p["batch"] for p in results["raw"]] == [1, 2, 4]
    assert all(p["images_per_s"] > 0 and p["runs"] >= 3 for p in results["raw"])
    assert results["meta"]["serve_config"]["max_batch_size"] == str(MAX_BATCH)
    assert "git_commit" in results["meta"]  # the code that was measured (None outside a git checkout)
    assert set(results["decode_ms"]["resnet18"]) == set(payloads.DEFAULT_KINDS)


def test_table_json_and_png_are_written_and_progress_is_shown(bench_run):
    out, done, results = bench_run
    table = (out / "table.md").read_text()
    assert table.startswith("Service and baseline, measured") and "| service | resnet18 | fp32 | photo | 1 |" in table
    assert "| torch eager | resnet18 | fp32 | photo | 2 |" in table and "Raw ONNX Runtime" in table
    assert done.stdout.strip() == table.strip()  # the table is also what the command prints
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out / "results.png") as plot:
        assert plot.width > 500 and plot.height > 300
    assert "[1/6] service resnet18 photo c=1:" in done.stderr and "[6/6] service resnet18 pixels c=3:" in done.stderr
    assert "baseline resnet18 12mp c=2:" in done.stderr
    names = {c["target"] for c in results["targets"]}
    # resnet18 fp32: the throughput ratio to raw ORT, to the baseline, and the concurrency-1 latency.
    assert names == {"resnet18: service best / raw ORT best", "resnet18: service best / torch eager best",
                     "resnet18: c=1 p50 ms (at most)"}
    assert all(isinstance(c["holds"], bool) for c in results["targets"])


def test_payloads_are_real_jpegs_of_the_promised_sizes(tmp_path):
    files = payloads.build(tmp_path)
    assert [len(files["photo"]), len(files["12mp"])] == [3, 1]
    for kind, size in (("photo", (500, 375)), ("12mp", (4000, 3000))):
        for path in files[kind]:
            with Image.open(path) as image:
                assert (image.format, image.size, image.mode) == ("JPEG", size, "RGB")
    assert files["12mp"][0].stat().st_size > 1_000_000  # grain keeps it near a real 12 MP photo's size
    with pytest.raises(ValueError, match="unknown JPEG payload"):
        payloads.build(tmp_path, ("tiny",))


def test_mean_batch_size_is_read_from_the_service_metrics():
    metrics = Metrics(lambda: {})
    for size in (4, 4, 1):
        metrics.batch_size.observe(size, "resnet18")
    metrics.batch_size.observe(2, "resnet152")
    totals = load.batch_totals(metrics.render())
    assert totals == {"resnet18": (9.0, 3.0), "resnet152": (2.0, 1.0)}
    assert load._mean_batches({"resnet18": (9.0, 3.0)}, {"resnet18": (21.0, 6.0)}) == {"resnet18": 4.0}


def test_raw_batch_sizes_end_at_the_service_maximum(tiny_models_dir):
    assert raw.batch_sizes(1) == [1] and raw.batch_sizes(8) == [1, 2, 4, 8] and raw.batch_sizes(12) == [1, 2, 4, 8, 12]
    config = ServeConfig(models=tiny_models_dir, max_batch_size=3, intra_op_threads=1)
    points = raw.sweep(Path(tiny_models_dir) / "resnet18" / "model.onnx", config, seconds=0.05)
    assert [p.batch for p in points] == [1, 2, 3] and all(p.p50_ms > 0 for p in points)


def test_targets_compare_like_with_like():
    results = {
        "models": {"resnet18": {"arch": "resnet18", "precision": "fp32"}, "resnet18-int8": {"arch": "resnet18", "precision": "int8"}},
        "raw": [{"model": "resnet18", "batch": 1, "images_per_s": 50.0, "p50_ms": 20.0},
                {"model": "resnet18", "batch": 8, "images_per_s": 100.0, "p50_ms": 80.0}],
        "decode_ms": {"resnet18": {"photo": 4.0}},
        "service": [{"model": "resnet18", "payload": "photo", "concurrency": 1, "images_per_s": 40.0, "p50_ms": 30.0},
                    {"model": "resnet18", "payload": "photo", "concurrency": 16, "images_per_s": 75.0, "p50_ms": 200.0},
                    {"model": "resnet18", "payload": "12mp", "concurrency": 16, "images_per_s": 9.0, "p50_ms": 900.0},
                    {"model": "resnet18-int8", "payload": "photo", "concurrency": 16, "images_per_s": 150.0, "p50_ms": 90.0}],
        "baseline": [{"model": "resnet18", "payload": "photo", "concurrency": 1, "images_per_s": 30.0, "p50_ms": 33.0}],
    }
    checks = {c["target"]: c for c in report.targets(results)}
    assert checks["resnet18: service best / raw ORT best"]["value"] == 0.75  # photo payload only
    assert checks["resnet18: service best / raw ORT best"]["holds"]
    assert checks["resnet18: service best / torch eager best"]["value"] == 2.5
    assert checks["resnet18: c=1 p50 ms (at most)"]["required"] == 34.0 and checks["resnet18: c=1 p50 ms (at most)"]["holds"]
    assert checks["resnet18-int8: int8 / fp32 service best"]["value"] == 2.0
    assert not checks["resnet18-int8: int8 / fp32 service best"]["holds"]


def test_bad_flags_are_one_line_on_stderr_and_exit_2(tiny_models_dir, tmp_path):
    for flags, expected in ((["--concurrency", "0,4"], "concurrency must be positive"),
                            (["--payloads", "gif"], "payloads must be some of photo,12mp,pixels"),
                            (["--header", "X-Key secret"], "--header must be 'Name: value'"),
                            (["--header", "Content-Length: 3"], "--header cannot set Content-Length"),
                            (["--url", "ftp://x"], "--url must be an http:// URL"),
                            (["--only", "resnet999", "--models", str(tiny_models_dir)], "--only names ['resnet999']")):
        done = subprocess.run([*_resnet_bench(), "--out", str(tmp_path), *flags], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (flags, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and expected in done.stderr, done.stderr


def test_help_names_every_payload_with_what_it_sends():
    done = subprocess.run([*_resnet_bench(), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    listed = done.stdout[done.stdout.index("payloads:\n"):]
    for kind in payloads.KINDS:
        assert f"  {kind} " in listed and payloads.DESCRIPTIONS[kind] in listed, kind
