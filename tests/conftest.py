"""Fixtures shared by every test folder: tiny trained checkpoints and the models folder exported from them.

Built once per test session in a temp dir. The models are trained for real on the synthetic set
(training.train.run) so that parity, fp16 agreement and int8 accuracy checks compare meaningful
logits, and kept tiny (32x32 inputs, ten classes, 150 steps: about 35 s each on a busy 2-core box)
so the whole suite stays fast.
torch is imported inside the fixtures: a test session that never asks for them stays torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# arch -> TrainConfig overrides. resnet18 at 32x32 (ImageNet stem, so 1x1 before the pool) and the
# paper's CIFAR resnet20: two depths, since the service selects models by depth. Zero-init residuals
# and a short run give ~57-61% val top-1 on the ten synthetic classes, plenty to tell an int8 or fp16
# model that predicts differently from one that agrees.
TINY_TRAINING = {
    "resnet18": {"max_steps": 150, "batch_size": 32, "lr": 0.1, "lr_milestones": (120,)},
    "resnet20": {"max_steps": 150, "batch_size": 32, "lr": 0.1, "lr_milestones": (120,)},
}
TINY_DATA = {"image_size": 32, "train_size": 4800, "val_size": 300, "workers": 0, "zero_init_residual": True, "seed": 0}


def pytest_collection_modifyitems(items) -> None:
    """A test that needs a trained network is slow (make test-fast skips it), whichever fixture brought it."""
    for item in items:
        if "tiny_checkpoints" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """arch -> checkpoint.pt of a briefly trained resnet18 and resnet20 at 32x32 on the synthetic set."""
    import torch

    from training import train
    from training.config import TrainConfig

    # RESNET_TEST_CHECKPOINTS=DIR keeps them between runs (a developer's repeated runs; CI trains anew).
    cache = os.environ.get("RESNET_TEST_CHECKPOINTS")
    root = Path(cache) if cache else tmp_path_factory.mktemp("checkpoints")
    if cache and all((root / arch / "checkpoint.pt").is_file() for arch in TINY_TRAINING):
        return {arch: root / arch / "checkpoint.pt" for arch in TINY_TRAINING}
    # One intra-op thread: these tiny convolutions gain little from a second one, and when other
    # processes share the two cores, OpenMP threads spin-waiting on each other are ruinous
    # (30 resnet20 steps at load average ~4.5: 8.3 s with 1 thread, 55.6 s with 2).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {
            arch: train.run(TrainConfig(arch=arch, out=str(root / arch), **TINY_DATA, **settings))
            for arch, settings in TINY_TRAINING.items()
        }
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_models_dir(tiny_checkpoints, tmp_path_factory) -> Path:
    """A models folder as resnet-export writes it: resnet18/model.onnx and resnet20/model.onnx (fp32)."""
    from export.exporter import export_checkpoint

    out = tmp_path_factory.mktemp("models")
    for checkpoint in tiny_checkpoints.values():
        export_checkpoint(checkpoint, out, progress=False)
    return out
