"""Shared fixtures for the deploy/ checks: the repository's paths, the offline tools, rendering."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# Every kustomization a user applies; base is rendered too, on its own, as overlays build on it.
KUSTOMIZATIONS = ("k8s/base", "k8s/overlays/cpu", "k8s/overlays/gpu", "k8s/training")


def find_tool(name: str) -> str:
    """The path of a dev-extra binary (kubectl, hadolint, shellcheck): the venv's, else PATH's."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found:
        return found
    # pyproject installs these wheels on Linux x86_64 only; there a missing tool is a broken install.
    if sys.platform == "linux" and platform.machine() == "x86_64":
        pytest.fail(f"{name} is missing: run `make install` (pyproject's dev extra installs it)")
    pytest.skip(f"{name}: no wheel for {sys.platform}/{platform.machine()}")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tool():
    return find_tool


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """Each kustomization's output, rendered once by kubectl's built-in kustomize, as documents."""
    kubectl = find_tool("kubectl")
    out = {}
    for name in KUSTOMIZATIONS:
        result = subprocess.run(
            [kubectl, "kustomize", str(DEPLOY / name)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"kustomize {name} failed: {result.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


def pick(docs: list[dict], kind: str) -> list[dict]:
    """The documents of one kind."""
    return [doc for doc in docs if doc["kind"] == kind]


@pytest.fixture(scope="session")
def of_kind():
    return pick
