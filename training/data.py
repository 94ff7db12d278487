"""Datasets and the paper's augmentation. A dataset is described by a plain-dict *record*, stored in
every checkpoint ("dataset"), so export and evaluation rebuild exactly the data a model saw:

    {"kind": "synthetic", "seed": 0, "train_size": 20000, "val_size": 1000, "image_size": 37}
    {"kind": "synthetic-placed", ...}                  # the same, objects placed for localisation
    {"kind": "cifar10", "root": "/data/cifar10", "download": true}
    {"kind": "folder", "root": "/data/imagenet"}       # train/<wnid>/*.JPEG, val/<wnid>/*.JPEG

    from training import data
    val = data.build_dataset(record, "val")                      # (PIL RGB image, label) pairs
    val = data.build_dataset(record, "val", data.eval_transform(pre))
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import torchvision
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS

from artifact import Preprocessing
from training import synthetic
from training.imagenet_wnids import WNIDS

SPLITS = ("train", "val")
KINDS = ("synthetic", "synthetic-placed", "cifar10", "folder")
SYNTHETIC_KINDS = ("synthetic", "synthetic-placed")  # imagesets.synthetic's two variants

# The usual ImageNet statistics (torchvision's reference scripts); CIFAR-10's are its own train set's.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class DataError(ValueError):
    """The data asked for cannot be used; the message names the path or value and what was expected."""


def synthetic_record(seed: int, train_size: int, val_size: int, input_size: int, kind: str = "synthetic") -> dict:
    """Record of the synthetic set, rendered at the eval resize size so the crop sees the same scale."""
    render_size = Preprocessing.for_input_size(input_size, synthetic.MEAN, synthetic.STD).resize_size
    return {"kind": kind, "seed": seed, "train_size": train_size, "val_size": val_size, "image_size": render_size}


def record_for(data: str, *, seed: int = 0, train_size: int = 20000, val_size: int = 1000,
               input_size: int = 224, cifar_root: str | None = None) -> dict:
    """Turn the --data flag ("synthetic", "synthetic-placed", "cifar10" or a folder path) into a record."""
    if data in SYNTHETIC_KINDS:
        return synthetic_record(seed, train_size, val_size, input_size, kind=data)
    if data == "cifar10":
        root = cifar_root or str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cifar10")
        return {"kind": "cifar10", "root": root, "download": True}
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"--data {data!r}: no such folder (expected 'synthetic', 'synthetic-placed', 'cifar10' "
                        f"or a folder with train/ and val/)")
    return {"kind": "folder", "root": str(root.resolve())}


def preprocessing_for(record: dict, input_size: int) -> Preprocessing:
    """The eval preprocessing recorded in the checkpoint for this data at this input size."""
    kind = _kind(record)
    if kind in SYNTHETIC_KINDS:
        return Preprocessing(input_size, max(input_size, record["image_size"]), synthetic.MEAN, synthetic.STD)
    if kind == "cifar10":
        # CIFAR images are already 32x32: evaluation only rescales them to the input size.
        return Preprocessing(input_size, input_size, CIFAR10_MEAN, CIFAR10_STD)
    return Preprocessing.for_input_size(input_size, IMAGENET_MEAN, IMAGENET_STD)


def eval_transform(pre: Preprocessing):
    """Resize(resize_size) + CenterCrop(input_size) + ToTensor + Normalize, as the service does."""
    interpolation = T.InterpolationMode(pre.interpolation)
    return T.Compose([
        T.Resize(pre.resize_size, interpolation=interpolation),
        T.CenterCrop(pre.input_size),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])


def train_transform(record: dict, pre: Preprocessing):
    """The paper's augmentation: ImageNet (sec. 3.4) random-resized crop + flip; CIFAR (sec. 4.2)
    pad 4 + random crop + flip; the synthetic set, rendered at the resize size, random crop + flip."""
    kind = _kind(record)
    size = pre.input_size
    if kind == "folder":
        head = [T.RandomResizedCrop(size, interpolation=T.InterpolationMode(pre.interpolation))]
    elif kind == "cifar10":
        head = ([T.Resize(size)] if size != 32 else []) + [T.RandomCrop(size, padding=4 * size // 32)]
    else:
        head = [T.RandomCrop(size)] if record["image_size"] > size else [T.Resize(size)]
    return T.Compose([*head, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(pre.mean, pre.std)])


def build_dataset(record: dict, split: str, transform=None):
    """A Dataset of (image, label) with .class_ids and .class_names; PIL RGB images if no transform."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    kind = _kind(record)
    if kind in SYNTHETIC_KINDS:
        length = record["train_size"] if split == "train" else record["val_size"]
        return synthetic.SyntheticDataset(record["seed"], split, length, record["image_size"], transform,
                                          placed=kind == "synthetic-placed")
    if kind == "cifar10":
        return _cifar10(record, split, transform)
    return _folder(record, split, transform)


def _kind(record: dict) -> str:
    kind = record.get("kind") if isinstance(record, dict) else None
    if kind == "torchvision-weights":
        raise DataError(f"the checkpoint holds {record.get('weights')} imported from torchvision, trained on "
                        f"{record.get('dataset')}; those images are not available here")
    if kind not in KINDS:
        raise DataError(f"dataset record kind must be one of {KINDS}, got {kind!r}")
    return kind


def _cifar10(record: dict, split: str, transform):
    root = Path(record["root"])
    try:
        dataset = torchvision.datasets.CIFAR10(root, train=split == "train", transform=transform,
                                               download=record.get("download", True))
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(
            f"CIFAR-10 is not in {str(root)!r} and could not be downloaded ({reason}); "
            f"place cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html there"
        ) from error
    dataset.class_ids = list(dataset.classes)
    dataset.class_names = list(dataset.classes)
    return dataset


def _folder(record: dict, split: str, transform):
    root = Path(record["root"])
    classes = scan_classes(root)
    folder = root / split
    dataset = torchvision.datasets.ImageFolder(str(folder), transform=transform)
    if dataset.classes != classes:
        raise DataError(f"{str(folder)!r} has classes {dataset.classes[:5]}... but train/ has {classes[:5]}...")
    dataset.class_ids = classes
    dataset.class_names = class_names(classes)
    return dataset


def scan_classes(root: Path) -> list[str]:
    """Sorted class folder names shared by root/train and root/val; each must hold an image."""
    found = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"data folder {str(root)!r} lacks {split}/ (expected {root}/train/<class>/*.jpg and val/)")
        names = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not names:
            raise DataError(f"{str(folder)!r} has no class folders")
        for name in names:
            if not any(f.suffix.lower() in IMG_EXTENSIONS for f in (folder / name).rglob("*") if f.is_file()):
                raise DataError(f"class folder {str(folder / name)!r} is empty (expected images: {', '.join(IMG_EXTENSIONS)})")
        found[split] = names
    if found["train"] != found["val"]:
        missing = sorted(set(found["train"]) ^ set(found["val"]))
        raise DataError(f"train/ and val/ in {str(root)!r} must have the same class folders; differ in {missing[:5]}")
    return found["train"]


def class_names(class_ids: list[str]) -> list[str]:
    """Human-readable names: torchvision's ImageNet categories when every id is an ImageNet WordNet id."""
    index = {wnid: i for i, wnid in enumerate(WNIDS)}
    if not all(c in index for c in class_ids):
        return list(class_ids)
    # torchvision lists the categories in ImageNet class-index order, i.e. sorted WordNet id order.
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    return [categories[index[c]] for c in class_ids]
