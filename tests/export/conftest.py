"""Export-test fixtures: reduced-precision exports of the tiny checkpoints, and their val images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from torchvision import transforms as T

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


def pixel_input(pre: Preprocessing) -> Preprocessing:
    """The input resnet-export gives a graph by default: uint8 RGB pixels, NHWC."""
    return replace(pre, input_dtype="uint8", layout="NHWC")


@pytest.fixture(scope="session")
def torch_reference():
    """checkpoint path -> (eval-mode torch network taking uint8 NHWC pixels, val pixels, val labels).

    The pixels come from torchvision's Resize + CenterCrop, independently of the exporter's own
    image path; the network is the checkpoint's behind export.graph.PixelInput."""
    from export.graph import with_input

    cache: dict[Path, tuple] = {}

    def load(path: Path):
        if path not in cache:
            payload = checkpoint.load(path)
            net = models.build(payload["arch"], payload["num_classes"], shortcut=payload.get("shortcut"))
            net.load_state_dict(payload["model"])
            pre = pixel_input(Preprocessing.from_dict(payload["preprocessing"]))
            crop = T.Compose([T.Resize(pre.resize_size, T.InterpolationMode(pre.interpolation)), T.CenterCrop(pre.input_size)])
            val = data.build_dataset(payload["dataset"], "val", crop)
            pairs = [val[i] for i in range(len(val))]
            images = np.stack([np.asarray(image.convert("RGB")) for image, _ in pairs])
            labels = np.array([label for _, label in pairs])
            cache[path] = (with_input(net, pre), images, labels)
        return cache[path]

    return load
