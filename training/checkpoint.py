"""The checkpoint file: the contract between resnet-train and resnet-export, built and read in one place.

A checkpoint is one `torch.save` file holding only tensors and plain Python values, so it loads with
`torch.load(path, weights_only=True)` and nothing a user hands us is ever unpickled. It describes
itself: enough to rebuild the network, its preprocessing and its labels without guessing, and enough
training state for `--resume` to continue exactly. `Checkpoint` is the typed form (as
`artifact.ModelCard` is for ONNX files); on disk it is a dict with these keys:

    format          "resnet-serving.checkpoint"
    version         int, FORMAT_VERSION
    arch            builder name in training.models, e.g. "resnet152" or "resnet20"
    shortcut        "A", "B" or "C" (Table 3) when the run asked for one (optional: absent means the
                    arch's own, B for the ImageNet ResNets, as in every checkpoint from before it)
    num_classes     int
    class_ids       [str]  dataset ids in logit order ("n01440764", "circle")
    class_names     [str]  human-readable names in the same order
    preprocessing   artifact.Preprocessing.to_dict()
    dataset         dict   how to rebuild the train/val data (training.data reads it)
    config          dict   the training config that produced it
    metrics         Metrics.to_dict(): {"epoch", "step", "val_top1", "val_top5"}, accuracies in percent or None
    model           state dict, without DDP ("module.") or torch.compile ("_orig_mod.") prefixes
    train_state     dict   optimizer, scheduler, scaler, RNG states, epoch, step (only for --resume)
    provenance      Provenance.to_dict(): who made it, when, with which code (optional in old files)

    ckpt = Checkpoint(arch=..., class_ids=..., ..., provenance=Provenance.here(command)); ckpt.save(path)
    ckpt = Checkpoint.load(path)        # typed; load(path) gives the validated dict
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import torch

from artifact import SHORTCUTS, ArtifactError, Preprocessing, git_commit, write_atomically

FORMAT = "resnet-serving.checkpoint"
FORMAT_VERSION = 1  # new optional keys keep 1 (old readers ignore them); a key changing meaning bumps it

_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(Exception):
    """A file that is missing, unreadable or not a checkpoint of ours; the message says which."""


def _check_keys(data: object, cls: type, where: str) -> dict:
    """`data` as a dict whose keys are fields of `cls`; CheckpointError naming the stray key otherwise."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where} must be a dict, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise CheckpointError(f"{where} has unknown keys {unknown}; expected some of {[f.name for f in fields(cls)]}")
    return data


def _check_type(value: object, kinds: tuple[type, ...], where: str) -> None:
    # bool is an int to isinstance, but never a step count or an accuracy
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
        expected = " or ".join(k.__name__ for k in kinds)
        raise CheckpointError(f"{where} must be {expected} or None, got {value!r}")


@dataclass(frozen=True)
class Metrics:
    """The last validation of the run; a checkpoint saved before any validation has Nones."""

    epoch: int | None = None  # epochs completed at the last validation
    step: int | None = None  # optimizer steps done when the checkpoint was saved
    val_top1: float | None = None  # validation top-1 accuracy, percent
    val_top5: float | None = None  # validation top-5 accuracy, percent

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, source: str = "checkpoint") -> Metrics:
        """Validate the checkpoint's "metrics" entry; the error names the bad key."""
        data = _check_keys(data, cls, f"{source}: metrics")
        for key in ("epoch", "step"):
            _check_type(data.get(key), (int,), f"{source}: metrics.{key}")
        for key in ("val_top1", "val_top5"):
            _check_type(data.get(key), (int, float), f"{source}: metrics.{key}")
            if data.get(key) is not None and not 0 <= data[key] <= 100:
                raise CheckpointError(f"{source}: metrics.{key} must be a percentage in [0, 100], got {data[key]!r}")
        return cls(**data)


@dataclass(frozen=True)
class Provenance:
    """Who made a checkpoint, when, and with which code: enough to reproduce or to distrust it."""

    created: str  # ISO 8601 UTC time of the save
    command: str | None = None  # the command line that made it
    host: str | None = None  # the machine's host name
    torch: str | None = None  # torch.__version__
    torchvision: str | None = None  # torchvision.__version__
    git_commit: str | None = None  # artifact.git_commit(): the code's commit, "-dirty" if edited; None outside git
    world_size: int | None = None  # training processes (DDP); None for imported or built weights
    device: str | None = None  # "cpu" or "cuda" for trained weights
    init_from: dict | None = None  # fine-tuning: the source's record and what happened to its head (finetune.py)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def here(cls, command: str, **extra) -> Provenance:
        """This process's provenance, now: time, versions, host and the git commit of the code."""
        import torchvision

        return cls(created=datetime.now(timezone.utc).isoformat(timespec="seconds"), command=command,
                   host=socket.gethostname(), torch=str(torch.__version__), torchvision=str(torchvision.__version__),
                   git_commit=git_commit(), **extra)

    @classmethod
    def from_dict(cls, data: object, source: str = "checkpoint") -> Provenance:
        """Validate the checkpoint's "provenance" entry; the error names the bad key."""
        data = _check_keys(data, cls, f"{source}: provenance")
        if not isinstance(data.get("created"), str):
            raise CheckpointError(f"{source}: provenance.created must be an ISO 8601 time, got {data.get('created')!r}")
        for f in fields(cls):
            kinds = {"world_size": (int,), "init_from": (dict,)}.get(f.name, (str,))
            _check_type(data.get(f.name), kinds, f"{source}: provenance.{f.name}")
        return cls(**data)


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint, typed. `to_payload` is what torch.save writes; `from_payload` validates a loaded one."""

    arch: str  # builder name in training.models
    class_ids: tuple[str, ...]  # dataset ids in logit order
    class_names: tuple[str, ...]  # human-readable names in the same order
    preprocessing: Preprocessing  # how an image becomes the input (artifact.Preprocessing)
    dataset: dict  # how to rebuild the train/val data (training.data.record_for)
    config: dict  # the training config that produced it (TrainConfig.to_dict, or the source's description)
    model: dict  # the state dict
    metrics: Metrics = field(default_factory=Metrics)
    provenance: Provenance | None = None
    train_state: dict | None = None  # only in checkpoints that --resume can continue
    shortcut: str | None = None  # Table 3's option the network was built with; None: the arch's own

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_ids", tuple(self.class_ids))
        object.__setattr__(self, "class_names", tuple(self.class_names))

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def to_payload(self) -> dict:
        """The on-disk dict: plain values and tensors only (weights_only=True loads it)."""
        payload = {"format": FORMAT, "version": FORMAT_VERSION, "arch": self.arch, "num_classes": self.num_classes,
                   "class_ids": list(self.class_ids), "class_names": list(self.class_names),
                   "preprocessing": self.preprocessing.to_dict(), "dataset": self.dataset, "config": self.config,
                   "metrics": self.metrics.to_dict(), "model": clean_state_dict(self.model)}
        if self.train_state is not None:
            payload["train_state"] = self.train_state
        if self.shortcut is not None:
            payload["shortcut"] = self.shortcut
        if self.provenance is not None:
            payload["provenance"] = self.provenance.to_dict()
        return payload

    @classmethod
    def from_payload(cls, payload: object, source: str = "checkpoint") -> Checkpoint:
        """Check a loaded payload against the contract; raises CheckpointError naming the bad key."""
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CheckpointError(f"{source} is not a resnet-serving checkpoint (no format {FORMAT!r})")
        if not isinstance(payload.get("version"), int) or payload["version"] > FORMAT_VERSION:
            raise CheckpointError(f"{source} has checkpoint version {payload.get('version')!r}, "
                                  f"newer than this reader's {FORMAT_VERSION}")
        for key, kind in REQUIRED.items():
            if not isinstance(payload.get(key), kind):
                raise CheckpointError(f"{source}: {key!r} must be {kind.__name__}, got {type(payload.get(key)).__name__}")
        n = payload["num_classes"]
        if len(payload["class_ids"]) != n or len(payload["class_names"]) != n:
            raise CheckpointError(
                f"{source}: num_classes is {n} but it lists {len(payload['class_ids'])} class ids "
                f"and {len(payload['class_names'])} names"
            )
        for key in ("class_ids", "class_names"):
            bad = [v for v in payload[key] if not isinstance(v, str)]
            if bad:
                raise CheckpointError(f"{source}: {key} must be strings, got {bad[0]!r}")
        try:
            pre = Preprocessing.from_dict(payload["preprocessing"])
        except (ArtifactError, TypeError) as error:
            raise CheckpointError(f"{source}: preprocessing: {error}") from error
        train_state = payload.get("train_state")
        if train_state is not None and not isinstance(train_state, dict):
            raise CheckpointError(f"{source}: 'train_state' must be dict, got {type(train_state).__name__}")
        provenance = payload.get("provenance")
        shortcut = payload.get("shortcut")
        if shortcut is not None and shortcut not in SHORTCUTS:
            raise CheckpointError(f"{source}: 'shortcut' must be one of {SHORTCUTS} or absent, got {shortcut!r}")
        return cls(arch=payload["arch"], class_ids=payload["class_ids"], class_names=payload["class_names"],
                   preprocessing=pre, dataset=payload["dataset"], config=payload["config"], model=payload["model"],
                   metrics=Metrics.from_dict(payload["metrics"], source),
                   provenance=None if provenance is None else Provenance.from_dict(provenance, source),
                   train_state=train_state, shortcut=shortcut)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a temp file in the same folder, fsync, then rename over `path`."""
        payload = self.to_payload()
        Checkpoint.from_payload(payload, str(path))  # what we write, we can read back
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda f: torch.save(payload, f))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
        """Load with weights_only=True and validate; any failure is a CheckpointError naming the file."""
        return cls.from_payload(_torch_load(Path(path), map_location), repr(str(path)))


# key -> required type of the top-level entries; train_state, provenance and shortcut are optional so
# that imported weights and checkpoints from before provenance or shortcut was recorded stay valid.
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
    """Check a loaded payload against the contract (Checkpoint.from_payload); returns it unchanged."""
    Checkpoint.from_payload(payload, source)
    return payload


def save(payload: Checkpoint | dict, path: str | os.PathLike) -> Path:
    """Write a Checkpoint (or its payload dict, as `load` returns it) atomically to `path`."""
    if isinstance(payload, dict):
        payload = Checkpoint.from_payload({"format": FORMAT, "version": FORMAT_VERSION, **payload}, str(path))
    return payload.save(path)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The validated on-disk dict (Checkpoint.load gives the typed form); failures are CheckpointErrors."""
    return validate(_torch_load(Path(path), map_location), repr(str(path)))


def _torch_load(path: Path, map_location) -> object:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    # torch.load raises whatever its parser meets (UnpicklingError, struct.error, RuntimeError,
    # BadZipFile...) on a corrupt or foreign file: every one of them means "not loadable".
    except Exception as error:  # noqa: BLE001
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot load {str(path)!r} as a weights-only checkpoint: {first_line}") from error


def sha256(path: str | os.PathLike) -> str:
    """Hex digest of the file, recorded by export as the model's provenance."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
