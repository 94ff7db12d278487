"""Checkpoints from torchvision's published ImageNet weights (`resnet-train import-torchvision`).

The weights come through torchvision's own weights API (`get_model_weights(arch)[name]`), which
downloads into, or reuses, the torch hub cache ($TORCH_HOME/hub/checkpoints/<file of the url>), so
an offline machine works once the file is placed there. Preprocessing, category names and the
published accuracy travel from the weights' metadata into the checkpoint.
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import torch
import torchvision

from artifact import Preprocessing
from training import checkpoint, models
from training.imagenet_wnids import WNIDS


class WeightsError(Exception):
    """Unknown weights name, or weights that cannot be downloaded or read; the message says which."""


def _weights(arch: str, name: str):
    if arch not in models.IMAGENET_ARCHS or arch.startswith("plain"):
        raise WeightsError(f"torchvision publishes weights for resnet18/34/50/101/152, not {arch!r}")
    enum = torchvision.models.get_model_weights(arch)
    try:
        return enum[name]
    except KeyError:
        raise WeightsError(f"{arch} has no weights {name!r}; expected one of {[w.name for w in enum]} or DEFAULT") from None


def published_weights(arch: str, weights_name: str):
    """torchvision's weights enum member and its state dict, from the hub cache or downloaded into it."""
    weights = _weights(arch, weights_name)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return weights, weights.get_state_dict(progress=False, weights_only=True)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise WeightsError(
            f"cannot get {weights} from {weights.url} ({reason[:200]}); offline, place the file at "
            f"{cache / Path(weights.url).name}"
        ) from error


def preprocessing(weights) -> Preprocessing:
    """The evaluation preprocessing the weights were published with (their transforms())."""
    transform = weights.transforms()
    return Preprocessing(transform.crop_size[0], transform.resize_size[0], tuple(transform.mean),
                         tuple(transform.std), transform.interpolation.value)


def import_torchvision(arch: str, weights_name: str, out: str | os.PathLike, command: str = "") -> Path:
    """Write out/checkpoint.pt from torchvision's `weights_name` for `arch`; returns its path."""
    weights, state_dict = published_weights(arch, weights_name)
    model = models.build(arch, len(weights.meta["categories"]))
    model.load_state_dict(state_dict)  # strict: proves the file matches our definition
    pre = preprocessing(weights)
    published = weights.meta["_metrics"]["ImageNet-1K"]
    return checkpoint.Checkpoint(
        arch=arch,
        class_ids=WNIDS,
        class_names=weights.meta["categories"],
        preprocessing=pre,
        # build_dataset refuses this kind with a message: the ImageNet images are not part of the weights.
        dataset={"kind": "torchvision-weights", "dataset": "ImageNet-1k", "weights": str(weights)},
        config={"source": "torchvision", "weights": str(weights), "url": weights.url, "recipe": weights.meta["recipe"]},
        metrics=checkpoint.Metrics(val_top1=published["acc@1"], val_top5=published["acc@5"]),
        model=model.state_dict(),
        provenance=checkpoint.Provenance.here(command),
    ).save(Path(out) / "checkpoint.pt")
