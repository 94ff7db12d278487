"""The serving images' install resolves without torch. The pip command comes from the Makefile
target the Dockerfiles run (`make -n`), and pip resolves it for real against the package index in
dry-run mode, on a copy of the files the image's build stage copies."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_CONTEXT = ("pyproject.toml", "README.md", "Makefile", "artifact.py", "training", "export", "service", "bench")
TORCH = {"torch", "torchvision", "torchaudio", "triton"}


def resolve(target: str, workdir: Path) -> set[str]:
    """The distributions `make TARGET` would install, resolved by pip --dry-run --report."""
    for name in BUILD_CONTEXT:  # the Dockerfiles' COPY lines; pip writes egg-info into its source
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, workdir / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, workdir / name)
    venv = workdir / "venv"
    plan = subprocess.run(["make", "-n", target, f"INTO={venv}"], cwd=workdir, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    (pip_line,) = [line for line in plan.stdout.splitlines() if " -m pip install " in line]
    argv = shlex.split(pip_line)
    assert argv[0] == f"{venv}/bin/python", pip_line
    report = workdir / "report.json"
    # Same requirement, same resolver; pip's cache may serve the index pages (it changes no answer).
    argv = [sys.executable, *(a for a in argv[1:] if a != "--no-cache-dir")]
    argv += ["--dry-run", "--ignore-installed", "--quiet", "--report", str(report)]
    result = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stderr[-2000:]}"
    return {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}


@pytest.mark.skipif(sys.platform != "linux", reason="the images are Linux; markers resolve per platform")
def test_cpu_serving_install_has_onnxruntime_and_no_torch(tmp_path):
    names = resolve("install-serve", tmp_path)
    assert {"resnet-serving", "litestar", "onnxruntime-gpu", "pillow", "numpy"} <= names
    assert not names & TORCH, f"the serving install pulls {sorted(names & TORCH)}"
    assert "onnx" not in names  # the exporter's dependency, not the service's


@pytest.mark.skipif(sys.platform != "linux", reason="the images are Linux; markers resolve per platform")
def test_gpu_serving_install_adds_cuda_and_cudnn_wheels_and_no_torch(tmp_path):
    names = resolve("install-serve-gpu", tmp_path)
    assert {"onnxruntime-gpu", "nvidia-cuda-runtime", "nvidia-cudnn-cu13"} <= names
    assert not names & TORCH, f"the GPU serving install pulls {sorted(names & TORCH)}"
