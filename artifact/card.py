"""The model card: what checkpoints and exported ONNX files say about themselves.

Training writes a `Preprocessing` into every checkpoint; resnet-export copies it, with the rest of a
`ModelCard`, into the ONNX file's `metadata_props`; resnet-serve reads the card back through ONNX
Runtime (`session.get_modelmeta().custom_metadata_map`). This module imports neither torch nor onnx,
so the exporter and the torch-free service share one definition and nothing downstream hard-codes a
mean, a std, a size or a label list.

Every value in `metadata_props` is a string: scalars are written as text, lists and the
preprocessing as JSON. Reading checks every key and names the one that is missing or malformed.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Mapping

# Bump when a key changes meaning; readers refuse newer versions. 2: the preprocessing
# says what the graph's input holds (input_dtype, layout); a version-1 card has neither key and
# means float32 NCHW, normalised by the caller, which is how version-1 files are still read.
# 3: the card lists the graph's extra outputs (embedding, class activation maps) and the input that
# sizes the maps; a version-1 or -2 card has neither key and its file has no extra outputs.
FORMAT_VERSION = 3
PREFIX = "resnet_serving."  # namespaces our keys among other tools' metadata_props
PRECISIONS = ("fp32", "fp16", "int8")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# What a graph's input tensor holds:
#   "uint8": the cropped RGB pixels, 0..255; the graph casts them and applies mean and std itself.
#   "float32": ToTensor + Normalize already applied by the caller (format-1 files).
INPUT_DTYPES = ("uint8", "float32")
LAYOUTS = ("NHWC", "NCHW")  # NHWC is what a decoded image already is: [batch, height, width, RGB]
# The shortcut options of He et al. Table 3 (training.models): A zero-pads where dimensions grow,
# B projects only there (torchvision's), C projects everywhere. A checkpoint or card without one
# (None) has the arch's own: B for the ImageNet ResNets, A for the CIFAR nets, none for plain nets.
SHORTCUTS = ("A", "B", "C")
# The explanation outputs resnet-export adds after the logits (export.explain): the pooled features
# [batch, C], the class activation maps of the top k classes [batch, k, h, w] and those classes
# [batch, k]; k comes from an optional int64 [1] input, CAM_K_DEFAULT when it is not fed.
EMBEDDING_OUTPUT = "embedding"
CAM_OUTPUT = "cam"
CAM_CLASSES_OUTPUT = "cam_classes"
CAM_K_INPUT = "cam_k"
CAM_K_DEFAULT = 5
OUTPUT_DTYPES = ("float32", "int64")


class ArtifactError(ValueError):
    """A checkpoint or model file does not follow this contract; the message names the problem."""


def cam_k_default(classes: int) -> int:
    """The cam_k a graph holds as its default: CAM_K_DEFAULT, or every class if there are fewer."""
    return min(CAM_K_DEFAULT, classes)


def depth_of(arch: str) -> int:
    """The layer count in an architecture name: 'resnet152' -> 152, 'plain20' -> 20."""
    match = re.fullmatch(r"(?:resnet|plain)(\d+)", arch)
    if not match:
        raise ArtifactError(f"arch {arch!r} is not of the form resnetN or plainN")
    return int(match.group(1))


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input: torchvision's Resize(resize_size) on the shorter
    side, CenterCrop(input_size), ToTensor, Normalize(mean, std), on RGB images.

    `input_dtype` and `layout` say where that recipe stops outside the graph: with "float32" the
    caller normalises (the torch network's own input, and every format-1 file);
    with "uint8" the caller stops after the crop and the graph does ToTensor and Normalize."""

    input_size: int  # side of the square center crop fed to the network, in pixels
    resize_size: int  # the shorter side after resizing, before the crop, in pixels
    mean: tuple[float, float, float]  # per-channel RGB mean of pixels scaled to [0, 1]
    std: tuple[float, float, float]  # per-channel RGB standard deviation, same scale
    interpolation: str = "bilinear"  # PIL resampling filter used by the resize
    input_dtype: str = "float32"  # one of INPUT_DTYPES: what the network's input tensor holds
    layout: str = "NCHW"  # one of LAYOUTS: the order of the input tensor's dimensions

    def __post_init__(self) -> None:
        if not (isinstance(self.input_size, int) and self.input_size > 0):
            raise ArtifactError(f"input_size must be a positive int, got {self.input_size!r}")
        if not (isinstance(self.resize_size, int) and self.resize_size >= self.input_size):
            raise ArtifactError(
                f"resize_size must be an int >= input_size ({self.input_size}), got {self.resize_size!r}"
            )
        for field, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
                raise ArtifactError(f"{field} must be three numbers (R, G, B), got {values!r}")
        if not all(v > 0 for v in self.std):
            raise ArtifactError(f"std must be positive, got {self.std!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ArtifactError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.input_dtype not in INPUT_DTYPES:
            raise ArtifactError(f"input_dtype must be one of {INPUT_DTYPES}, got {self.input_dtype!r}")
        if self.layout not in LAYOUTS:
            raise ArtifactError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict:
        """Plain types only, so it fits in a weights-only checkpoint and in JSON."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping) -> Preprocessing:
        """The inverse of to_dict; unknown or missing keys are an error."""
        if not isinstance(data, Mapping):
            raise ArtifactError(f"preprocessing must be a mapping, got {type(data).__name__}")
        expected = {"input_size", "resize_size", "mean", "std", "interpolation", "input_dtype", "layout"}
        if set(data) - expected or not {"input_size", "resize_size", "mean", "std"} <= set(data):
            raise ArtifactError(f"preprocessing keys must be {sorted(expected)}, got {sorted(data)}")
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})

    @classmethod
    def for_input_size(cls, input_size: int, mean, std, interpolation: str = "bilinear") -> Preprocessing:
        """torchvision's evaluation recipe: resize to input_size / 0.875 (256 for 224), then crop."""
        return cls(input_size, int(round(input_size / 0.875)), tuple(mean), tuple(std), interpolation)

    def input_shape(self, batch: int | str = "batch") -> tuple:
        """The input tensor's shape in this layout: (batch, S, S, 3) or (batch, 3, S, S)."""
        side = self.input_size
        return (batch, side, side, 3) if self.layout == "NHWC" else (batch, 3, side, side)


@dataclass(frozen=True)
class ExtraOutput:
    """One graph output besides the logits: its name, element type and shape."""

    name: str  # the graph output's name, e.g. EMBEDDING_OUTPUT
    dtype: str  # one of OUTPUT_DTYPES
    shape: tuple[int | str, ...]  # an int is a fixed size, a string a symbolic one ("batch", "k")

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        if not (isinstance(self.name, str) and self.name):
            raise ArtifactError(f"an extra output's name must be a non-empty string, got {self.name!r}")
        if self.dtype not in OUTPUT_DTYPES:
            raise ArtifactError(f"output {self.name!r}: dtype must be one of {OUTPUT_DTYPES}, got {self.dtype!r}")
        if not all(isinstance(d, str) or (isinstance(d, int) and d > 0) for d in self.shape):
            raise ArtifactError(f"output {self.name!r}: shape must hold positive ints and names, got {self.shape!r}")

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping) -> ExtraOutput:
        if not isinstance(data, Mapping) or set(data) != {"name", "dtype", "shape"}:
            raise ArtifactError(f"an extra output must have keys name, dtype, shape, got {data!r}")
        if not isinstance(data["shape"], list):
            raise ArtifactError(f"output {data['name']!r}: shape must be a list, got {data['shape']!r}")
        return cls(data["name"], data["dtype"], tuple(data["shape"]))


@dataclass(frozen=True)
class ModelCard:
    """Everything the service needs to know about one exported model, stored inside the file."""

    name: str  # the served name, e.g. "resnet152" or "resnet18-int8"
    arch: str  # the builder that made the network, e.g. "resnet152"
    num_classes: int  # length of the logits vector
    class_ids: tuple[str, ...]  # dataset ids in logit order, e.g. WordNet ids "n01440764"
    class_names: tuple[str, ...]  # human-readable labels in logit order
    preprocessing: Preprocessing
    precision: str  # one of PRECISIONS: the weights' and compute's number format
    source_sha256: str  # sha256 of the checkpoint file this was exported from
    val_top1: float | None  # the checkpoint's last validation top-1 accuracy, percent
    val_top5: float | None  # the checkpoint's last validation top-5 accuracy, percent
    torch_version: str  # torch that exported the graph
    onnx_version: str  # onnx that checked the graph
    exported_at: str  # ISO 8601 UTC time of the export
    input_name: str = "input"  # graph input: preprocessing.input_dtype, preprocessing.input_shape()
    output_name: str = "logits"  # graph output: float32 [batch, num_classes]
    git_commit: str | None = None  # git_commit() of the exporting code; None outside a git checkout
    shortcut: str | None = None  # SHORTCUTS option the network was built with; None: the arch's own
    extra_outputs: tuple[ExtraOutput, ...] = ()  # graph outputs besides the logits; () in older files
    cam_k_input: str | None = None  # optional int64 [1] input: how many classes' maps CAM_OUTPUT holds

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_ids", tuple(self.class_ids))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if len(self.class_ids) != self.num_classes or len(self.class_names) != self.num_classes:
            raise ArtifactError(
                f"num_classes is {self.num_classes} but there are {len(self.class_ids)} class ids "
                f"and {len(self.class_names)} class names"
            )
        if self.precision not in PRECISIONS:
            raise ArtifactError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.git_commit is not None and not isinstance(self.git_commit, str):
            raise ArtifactError(f"git_commit must be a string or None, got {self.git_commit!r}")
        if self.shortcut is not None and self.shortcut not in SHORTCUTS:
            raise ArtifactError(f"shortcut must be one of {SHORTCUTS} or None, got {self.shortcut!r}")
        object.__setattr__(self, "extra_outputs", tuple(self.extra_outputs))
        names = [self.output_name, *(e.name for e in self.extra_outputs)]
        if len(set(names)) != len(names):
            raise ArtifactError(f"output names must differ, got {names}")
        if (self.cam_k_input is not None) != (self.output(CAM_OUTPUT) is not None):
            raise ArtifactError(f"cam_k_input ({self.cam_k_input!r}) must be set exactly when {CAM_OUTPUT!r} is an output")
        depth_of(self.arch)

    def output(self, name: str) -> ExtraOutput | None:
        """The extra output called `name`, or None when the file has none (every file before format 3)."""
        return next((e for e in self.extra_outputs if e.name == name), None)

    @property
    def embedding_size(self) -> int | None:
        """Width of the pooled embedding (512 for resnet18, 2048 for resnet152); None without one."""
        out = self.output(EMBEDDING_OUTPUT)
        return out.shape[1] if out is not None else None

    @property
    def cam_k(self) -> int | None:
        """How many classes' maps CAM_OUTPUT holds when cam_k is not fed; None without maps."""
        return cam_k_default(self.num_classes) if self.output(CAM_OUTPUT) is not None else None

    @property
    def cam_size(self) -> tuple[int, int] | None:
        """(h, w) of the class activation maps; None without them. (1, 1) carries no location."""
        out = self.output(CAM_OUTPUT)
        return (out.shape[2], out.shape[3]) if out is not None else None

    @property
    def depth(self) -> int:
        return depth_of(self.arch)

    @property
    def input_dtype(self) -> str:
        """What the graph's input holds: "uint8" pixels or "float32" normalised (Preprocessing)."""
        return self.preprocessing.input_dtype

    @property
    def layout(self) -> str:
        """"NHWC" or "NCHW": the order of the graph input's dimensions."""
        return self.preprocessing.layout

    def to_metadata(self) -> dict[str, str]:
        """The ONNX metadata_props entries, every value a string."""
        values = {
            "format_version": str(FORMAT_VERSION),
            "name": self.name,
            "arch": self.arch,
            "depth": str(self.depth),
            "num_classes": str(self.num_classes),
            "class_ids": json.dumps(list(self.class_ids)),
            "class_names": json.dumps(list(self.class_names)),
            "preprocessing": json.dumps(self.preprocessing.to_dict()),
            "precision": self.precision,
            "source_sha256": self.source_sha256,
            "val_top1": json.dumps(self.val_top1),
            "val_top5": json.dumps(self.val_top5),
            "torch_version": self.torch_version,
            "onnx_version": self.onnx_version,
            "exported_at": self.exported_at,
            "input_name": self.input_name,
            "output_name": self.output_name,
            "git_commit": json.dumps(self.git_commit),
            "shortcut": json.dumps(self.shortcut),
            "extra_outputs": json.dumps([e.to_dict() for e in self.extra_outputs]),
            "cam_k_input": json.dumps(self.cam_k_input),
        }
        return {PREFIX + key: value for key, value in values.items()}

    @classmethod
    def from_metadata(cls, props: Mapping[str, str]) -> ModelCard:
        """Read a card back from metadata_props; raises ArtifactError naming the bad key."""

        def get(key: str) -> str:
            if PREFIX + key not in props:
                raise ArtifactError(f"model metadata lacks {PREFIX + key!r}: not exported by resnet-export?")
            return props[PREFIX + key]

        def parse(key: str, convert):
            raw = get(key)
            try:
                return convert(raw)
            except (ValueError, TypeError, json.JSONDecodeError) as error:
                raise ArtifactError(f"model metadata {PREFIX + key!r} is malformed: {raw[:80]!r}") from error

        version = parse("format_version", int)
        if version > FORMAT_VERSION:
            raise ArtifactError(f"model metadata format {version} is newer than this reader ({FORMAT_VERSION})")
        return cls(
            name=get("name"),
            arch=get("arch"),
            num_classes=parse("num_classes", int),
            class_ids=parse("class_ids", json.loads),
            class_names=parse("class_names", json.loads),
            preprocessing=Preprocessing.from_dict(parse("preprocessing", json.loads)),
            precision=get("precision"),
            source_sha256=get("source_sha256"),
            val_top1=parse("val_top1", json.loads),
            val_top5=parse("val_top5", json.loads),
            torch_version=get("torch_version"),
            onnx_version=get("onnx_version"),
            exported_at=get("exported_at"),
            input_name=get("input_name"),
            output_name=get("output_name"),
            # Optional: files exported before the commit was recorded lack it (still format 1).
            git_commit=parse("git_commit", json.loads) if PREFIX + "git_commit" in props else None,
            # Optional: files exported before `resnet-train --shortcut` lack it and have the arch's own.
            shortcut=parse("shortcut", json.loads) if PREFIX + "shortcut" in props else None,
            # Format 3 lists them (maybe none); a file of format 1 or 2 predates them and has none.
            extra_outputs=_extra_outputs(parse("extra_outputs", json.loads)) if version >= 3 else (),
            cam_k_input=parse("cam_k_input", json.loads) if version >= 3 else None,
        )


def _extra_outputs(raw) -> tuple[ExtraOutput, ...]:
    if not isinstance(raw, list):
        raise ArtifactError(f"model metadata {PREFIX + 'extra_outputs'!r} must be a list, got {raw!r}")
    return tuple(ExtraOutput.from_dict(item) for item in raw)
