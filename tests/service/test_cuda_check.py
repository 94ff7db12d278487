"""bench/gpu_check.py on a machine without a usable NVIDIA GPU: one clear line, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service import cuda


@pytest.mark.skipif(cuda.probe().usable, reason="this machine has a GPU: the check would run for minutes")
def test_gpu_check_degrades_clearly_without_a_gpu(tmp_path):
    out = tmp_path / "gpu"
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no usable NVIDIA GPU ("), done.stderr
    assert not out.exists()
