"""A clone anywhere passes: the tests and the bench read nothing outside the repository.

The repository is cloned (its committed state) into an empty temporary folder with nothing beside it,
and the tests that read real photos run there, with this environment's installed packages and the
clone's own code first on the path. A test or bench module that reached for any file beside the
checkout fails here, as it would in a user's clone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PHOTO_TESTS = ("tests/service/test_preprocess.py::test_matches_torchvision_on_the_real_photos",)


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs git and a checkout")
def test_a_clone_in_an_empty_folder_reads_its_photos_and_builds_the_bench_payloads(tmp_path):
    empty = tmp_path / "nothing-beside"
    empty.mkdir()
    clone = empty / "resnet-serving"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)], check=True)
    assert sorted(p.name for p in empty.iterdir()) == ["resnet-serving"]
    env = {**os.environ, "PYTHONPATH": str(clone), "PYTHONDONTWRITEBYTECODE": "1"}
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PHOTO_TESTS],
        cwd=clone, env=env, capture_output=True, text=True, timeout=300,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout and " failed" not in tests.stdout
    payloads = subprocess.run(
        [sys.executable, "-m", "bench.payloads", str(tmp_path / "payloads")],
        cwd=clone, env=env, capture_output=True, text=True, timeout=300,
    )
    assert payloads.returncode == 0, payloads.stderr[-2000:]
    assert (tmp_path / "payloads" / "photo-0.jpg").stat().st_size > 10_000
