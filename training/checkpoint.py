"""The checkpoint file: the contract between resnet-train and resnet-export.

A checkpoint is one `torch.save` file holding only tensors and plain Python values, so it loads with
`torch.load(path, weights_only=True)` and nothing a user hands us is ever unpickled. It describes
itself: enough to rebuild the network, its preprocessing and its labels without guessing, and enough
training state for `--resume` to continue exactly.

    format          "resnet-serving.checkpoint"
    version         int, FORMAT_VERSION
    arch            builder name in training.models, e.g. "resnet152" or "resnet20"
    num_classes     int
    class_ids       [str]  dataset ids in logit order ("n01440764", "circle")
    class_names     [str]  human-readable names in the same order
    preprocessing   artifact.Preprocessing.to_dict()
    dataset         dict   how to rebuild the train/val data (training.data reads it)
    config          dict   the training config that produced it
    metrics         dict   {"epoch", "step", "val_top1", "val_top5"}: accuracies in percent, or None
    model           state dict, without DDP ("module.") or torch.compile ("_orig_mod.") prefixes
    train_state     dict   optimizer, scheduler, scaler, RNG states, epoch, step (only for --resume)
    provenance      dict   {"created", "torch", "torchvision", "host", "command"}
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from artifact import ArtifactError, Preprocessing, write_atomically

FORMAT = "resnet-serving.checkpoint"
FORMAT_VERSION = 1

# key -> required type; train_state and provenance are optional so that imported weights
# (resnet-train import-torchvision) are valid checkpoints too.
REQUIRED = {
    "format": str,
    "version": int,
    "arch": str,
    "num_classes": int,
    "class_ids": list,
    "class_names": list,
    "preprocessing": dict,
    "dataset": dict,
    "config": dict,
    "metrics": dict,
    "model": dict,
}

_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(Exception):
    """A file that is missing, unreadable or not a checkpoint of ours; the message says which."""


def non_finite(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [key for key, value in state_dict.items()
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()]


def clean_state_dict(state_dict: dict) -> dict:
    """Strip the DDP and torch.compile prefixes so the keys match a plain torchvision model."""
    cleaned = {}
    for key, value in state_dict.items():
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
            key = key.replace("." + prefix, ".")
        cleaned[key] = value
    return cleaned


def validate(payload: object, source: str = "checkpoint") -> dict:
    """Check a loaded payload against the contract; raises CheckpointError naming the problem."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{source} is not a resnet-serving checkpoint (no format {FORMAT!r})")
    if payload.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{source} has checkpoint version {payload['version']}, newer than {FORMAT_VERSION}")
    for key, kind in REQUIRED.items():
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"{source}: {key!r} must be {kind.__name__}, got {type(payload.get(key)).__name__}")
    n = payload["num_classes"]
    if len(payload["class_ids"]) != n or len(payload["class_names"]) != n:
        raise CheckpointError(
            f"{source}: num_classes is {n} but it lists {len(payload['class_ids'])} class ids "
            f"and {len(payload['class_names'])} names"
        )
    try:
        Preprocessing.from_dict(payload["preprocessing"])
    except ArtifactError as error:
        raise CheckpointError(f"{source}: {error}") from error
    return payload


def save(payload: dict, path: str | os.PathLike) -> Path:
    """Write atomically: a temp file in the same folder, fsync, then rename over `path`."""
    payload = {"format": FORMAT, "version": FORMAT_VERSION, **payload}
    payload["model"] = clean_state_dict(payload["model"])
    validate(payload, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda f: torch.save(payload, f))
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load with weights_only=True and validate; any failure is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    # torch.load raises whatever its parser meets (UnpicklingError, struct.error, RuntimeError,
    # BadZipFile...) on a corrupt or foreign file: every one of them means "not loadable".
    except Exception as error:  # noqa: BLE001
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot load {str(path)!r} as a weights-only checkpoint: {first_line}") from error
    return validate(payload, repr(str(path)))


def sha256(path: str | os.PathLike) -> str:
    """Hex digest of the file, recorded by export as the model's provenance."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
