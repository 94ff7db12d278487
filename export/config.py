"""The export stage's settings and its error type; the CLI's flags map onto `ExportConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from artifact import INPUT_DTYPES, PRECISIONS

MIN_OPSET = 18  # opset >= 18 (the dynamo exporter's floor; ReduceMean takes axes as input)
PARITY_BATCHES = (1, 2, 7)  # fp32 parity at these batch sizes, 7 to catch odd-size bugs
PARITY_TOLERANCE = 1e-3  # fp32 max |ORT - torch| allowed, as a fraction of max |logit|
FP16_MIN_AGREEMENT = 99.0  # percent of validation images whose fp16 top-1 equals fp32's
INT8_MAX_TOP1_DROP = 1.5  # accuracy points int8 may lose against fp32 on validation images
# How far fp16's and int8's class activation maps and embeddings may drift from fp32's, on the
# validation images that judge their top-1 (docs/export.md has the values measured under them):
#   correlation_p5: 5th percentile over images of the Pearson r between the maps of fp32's top-1 class
#   same_peak: percent of images whose map peaks where fp32's does, up to ties: on a cell whose value
#     in fp32's map is within PEAK_TIE of fp32's peak, as a fraction of the map's range (a random
#     network's 7x7 maps have their two highest cells ~5% apart, which int8's rounding can swap)
#   embedding_cosine: the lowest cosine similarity of an image's two embeddings
PEAK_TIE = 0.05
MAP_GATES = {
    "fp16": {"correlation_p5": 0.99, "same_peak": 99.0, "embedding_cosine": 0.999},
    "int8": {"correlation_p5": 0.95, "same_peak": 90.0, "embedding_cosine": 0.99},
}
NAME_SUFFIX = {"fp32": "", "fp16": "-fp16", "int8": "-int8"}  # default served name = arch + suffix


class ExportError(Exception):
    """The export was refused; the message says why in one line and nothing was written."""


@dataclass(frozen=True)
class ExportConfig:
    """One export: which checkpoint, where to, in which number format, judged on how many images."""

    checkpoint: Path  # a resnet-train checkpoint (training/checkpoint.py format)
    out_dir: Path  # the models folder; the model lands in out_dir/name/model.onnx
    name: str | None = None  # served name; None means the arch plus the precision's suffix
    precision: str = "fp32"  # one of artifact.PRECISIONS
    opset: int = MIN_OPSET  # ONNX opset of the exported graph, >= MIN_OPSET
    calibration_data: str | None = None  # int8 only: "synthetic", "cifar10" or an ImageNet-style
    # folder whose train/ split calibrates; None means the dataset recorded in the checkpoint
    calibration_images: int = 256  # training images whose activation ranges set the int8 scales
    eval_images: int = 1000  # validation images (at most) that judge fp16 and int8 against fp32
    batch_size: int = 32  # images per ONNX Runtime call while calibrating and judging
    progress: bool = True  # print the slow steps on stderr
    input: str = "uint8"  # the graph's input: "uint8" RGB pixels [batch, S, S, 3] normalised in the
    # graph, or "float32" [batch, 3, S, S] normalised by the caller (format-1 cards)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.precision not in PRECISIONS:
            raise ExportError(f"unknown precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.input not in INPUT_DTYPES:
            raise ExportError(f"unknown input {self.input!r}: expected one of {', '.join(INPUT_DTYPES)}")
        if not isinstance(self.opset, int) or self.opset < MIN_OPSET:
            raise ExportError(f"opset {self.opset!r} is too old: expected an int >= {MIN_OPSET}")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ExportError(f"model name {self.name!r} must be a plain folder name (no '/', not hidden)")
        for field in ("calibration_images", "eval_images", "batch_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ExportError(f"{field} must be a positive int, got {value!r}")

    def model_name(self, arch: str) -> str:
        """The folder name under out_dir: --name, else e.g. 'resnet18' or 'resnet18-int8'."""
        return self.name if self.name is not None else arch + NAME_SUFFIX[self.precision]
