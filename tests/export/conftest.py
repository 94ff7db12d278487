"""Export-test fixtures: reduced-precision exports of the tiny checkpoints, and their val images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from artifact import Preprocessing
from training import checkpoint, data, models


@pytest.fixture(scope="session")
def reduced_models_dir(tiny_checkpoints, tmp_path_factory) -> Path:
    """resnet20-fp16 and resnet18-int8 (default names), exported once for the whole session."""
    from export.exporter import export_checkpoint

    out = tmp_path_factory.mktemp("reduced")
    export_checkpoint(tiny_checkpoints["resnet20"], out, precision="fp16", progress=False)
    export_checkpoint(tiny_checkpoints["resnet18"], out, precision="int8", progress=False)
    return out


@pytest.fixture(scope="session")
def torch_reference():
    """checkpoint path -> (eval-mode torch network, val images float32 NCHW, val labels)."""
    cache: dict[Path, tuple] = {}

    def load(path: Path):
        if path not in cache:
            payload = checkpoint.load(path)
            net = models.build(payload["arch"], payload["num_classes"])
            net.load_state_dict(payload["model"])
            pre = Preprocessing.from_dict(payload["preprocessing"])
            val = data.build_dataset(payload["dataset"], "val", data.eval_transform(pre))
            pairs = [val[i] for i in range(len(val))]
            images = torch.stack([image for image, _ in pairs]).numpy()
            labels = np.array([label for _, label in pairs])
            cache[path] = (net.eval(), images, labels)
        return cache[path]

    return load
