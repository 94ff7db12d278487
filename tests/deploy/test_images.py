"""The Dockerfiles lint clean, install through the Makefile's targets (so images and README can't
drift), ship everything `pip install` reads, run as a non-root user, and the GPU image's CUDA base
matches the CUDA that onnxruntime-gpu's wheels were built for. Docker itself cannot run here."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from service import config as serve_config

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
# Dockerfile -> the Makefile target its build stage runs
INSTALL_TARGET = {"Dockerfile": "install-serve", "Dockerfile.gpu": "install-serve-gpu", "Dockerfile.train": "install-train"}
SERVING = ("Dockerfile", "Dockerfile.gpu")


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    logical, current = [], ""
    for line in (DOCKER / dockerfile).read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def stages(dockerfile: str) -> list[list[tuple[str, str]]]:
    """The instructions of each FROM stage, in order (the last one is the image)."""
    out: list[list[tuple[str, str]]] = []
    for op, args in instructions(dockerfile):
        if op == "FROM":
            out.append([])
        if out:
            out[-1].append((op, args))
    return out


@pytest.mark.parametrize("dockerfile", sorted(INSTALL_TARGET))
def test_dockerfile_lints_clean_with_hadolint(tool, dockerfile):
    result = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "style", str(DOCKER / dockerfile)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_dockerfile_with_known_mistakes(tool, tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN cd /src && pip install .\n")
    result = subprocess.run([tool("hadolint"), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the :latest tag


@pytest.mark.parametrize("dockerfile, target", sorted(INSTALL_TARGET.items()))
def test_build_stage_installs_through_the_makefile_target(repo, dockerfile, target):
    build = stages(dockerfile)[0]
    runs = [args for op, args in build if op == "RUN"]
    assert f"make {target} INTO=/opt/venv" in runs, f"{dockerfile} must install with `make {target}`"
    dry = subprocess.run(["make", "-n", target, "INTO=/opt/venv"], cwd=repo, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "pip install" in dry.stdout
    final = stages(dockerfile)[-1]
    assert ("COPY", "--from=build /opt/venv /opt/venv") in final


@pytest.mark.parametrize("dockerfile", sorted(INSTALL_TARGET))
def test_build_stage_copies_everything_pip_install_reads(repo, dockerfile):
    project = tomllib.loads((repo / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    packages = {p.rstrip("*") for p in setuptools["packages"]["find"]["include"]}
    needed = {"pyproject.toml", project["project"]["readme"], "Makefile"}
    needed |= {f"{m}.py" for m in setuptools["py-modules"]} | {f"{p}/" for p in packages}
    copied = set()
    for op, args in stages(dockerfile)[0]:
        if op == "COPY":
            copied |= set(shlex.split(args)[:-1])
    assert needed <= copied, f"{dockerfile} misses {sorted(needed - copied)}"
    assert all((repo / path).exists() for path in needed)


@pytest.mark.parametrize("dockerfile", sorted(INSTALL_TARGET))
def test_image_runs_as_a_numeric_non_root_user(dockerfile):
    users = [args for op, args in stages(dockerfile)[-1] if op == "USER"]
    assert users, f"{dockerfile} runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "runAsNonRoot can only verify a numeric uid"


@pytest.mark.parametrize("dockerfile", SERVING)
def test_serving_image_checks_liveness_and_its_environment_parses(dockerfile):
    final = stages(dockerfile)[-1]
    (healthcheck,) = [args for op, args in final if op == "HEALTHCHECK"]
    assert "/opt/healthcheck.py" in healthcheck
    assert ("COPY", "deploy/docker/healthcheck.py /opt/healthcheck.py") in final
    assert ("ENTRYPOINT", '["resnet-serve"]') in final
    env = {}
    for op, args in final:
        if op == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    parsed = serve_config.parse([], environ=env)
    assert (str(parsed.models), parsed.host, parsed.port) == ("/models", "0.0.0.0", 8000)
    assert any(op == "EXPOSE" and args == str(parsed.port) for op, args in final)
    assert any(op == "ARG" and args.startswith("MODELS=") for op, args in final), "no build argument bakes models in"


def test_gpu_base_image_has_the_cuda_major_onnxruntime_gpu_was_built_for():
    args = dict(a.split("=", 1) for op, a in instructions("Dockerfile.gpu") if op == "ARG" and "=" in a)
    base_major = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-runtime-ubuntu\d+\.\d+", args["CUDA_IMAGE"]).group(1)
    requires = metadata.requires("onnxruntime-gpu") or []
    runtime = [r for r in requires if r.startswith("nvidia-cuda-runtime") and 'extra == "cuda"' in r]
    assert runtime, f"onnxruntime-gpu's cuda extra names no CUDA runtime: {requires}"
    ort_major = re.search(r"~=\s*(\d+)", runtime[0]).group(1)
    assert base_major == ort_major, f"base image CUDA {base_major} vs onnxruntime-gpu built for CUDA {ort_major}"
