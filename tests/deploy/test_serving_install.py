"""The serving images' install pulls no torch. The pip command comes from the Makefile target the
Dockerfiles run (`make -n`); its requirement (`.` or `.[gpu]`) is resolved offline, against
pyproject.toml and the metadata of the distributions installed here (the dev install holds every
serving dependency), so the answer needs no package index and is the same on every clone."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.slow  # installs the project into a fresh virtual environment

REPO = Path(__file__).resolve().parents[2]
TORCH = {"torch", "torchvision", "torchaudio", "triton"}


def _extras_of(target: str) -> set[str]:
    """The extras that `make TARGET` installs the project with, read from its pip command."""
    plan = subprocess.run(["make", "-n", target, "INTO=/nonexistent"], cwd=REPO, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    (pip_line,) = [line for line in plan.stdout.splitlines() if " -m pip install " in line]
    (spec,) = [arg for arg in shlex.split(pip_line) if arg == "." or arg.startswith(".[")]
    match = re.fullmatch(r"\.(?:\[(.*)\])?", spec)
    return {e.strip() for e in (match.group(1) or "").split(",") if e.strip()}


def _wanted(requirements, extras: set[str]) -> list[Requirement]:
    """The requirements whose markers hold on this platform with these extras."""
    wanted = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
            wanted.append(req)
    return wanted


def resolve(target: str) -> set[str]:
    """Every distribution `make TARGET` would install: the project's requirements from pyproject.toml,
    then each dependency's own requirements from its installed metadata, transitively."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = _extras_of(target)
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    names, todo = {"resnet-serving"}, _wanted(requirements, set())
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name == "resnet-serving":  # a self-reference such as `resnet-serving[train]`
            continue
        if name in names:
            continue
        names.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} (needed by `make {target}`) is not installed here; run make install")
        todo += _wanted(dist.requires or [], set(req.extras))
    return names


@pytest.mark.skipif(sys.platform != "linux", reason="the images are Linux; markers resolve per platform")
def test_cpu_serving_install_has_onnxruntime_and_no_torch():
    names = resolve("install-serve")
    assert {"resnet-serving", "litestar", "onnxruntime-gpu", "pillow", "numpy"} <= names
    assert not names & TORCH, f"the serving install pulls {sorted(names & TORCH)}"
    assert "onnx" not in names  # the exporter's dependency, not the service's


@pytest.mark.skipif(sys.platform != "linux", reason="the images are Linux; markers resolve per platform")
def test_gpu_serving_install_adds_cuda_and_cudnn_wheels_and_no_torch():
    names = resolve("install-serve-gpu")
    assert {"onnxruntime-gpu", "nvidia-cuda-runtime", "nvidia-cudnn-cu13"} <= names
    assert not names & TORCH, f"the GPU serving install pulls {sorted(names & TORCH)}"


def test_the_train_install_does_pull_torch():
    """The check can fail: the same walk finds torch where it is wanted."""
    assert {"torch", "torchvision"} <= resolve("install-train")
