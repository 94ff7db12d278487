"""Torch network -> ONNX graph with a dynamic batch, and the model card written into it.

The graph takes what the service has after the crop, uint8 RGB pixels, and does
ToTensor and Normalize itself (`PixelInput`): the service then does no float work per pixel, and a
GPU receives a quarter of the bytes.

Why the normalisation stays explicit nodes (Transpose, Cast, Sub, Mul) rather than being folded
into the first convolution's weights and bias: the fold is only exact away from the borders. The
stem pads with zeros in *normalised* space, which is the pixel value 255 * mean, while a folded
convolution pads raw pixels with 0 (black). Measured with `python -m export.fold_check` on the tiny
test resnet18 (32 px, where the 3-px border is a large part of the image) and three real photos: the
folded graph's logits moved by 53% of their scale and a top-1 changed, against a parity tolerance
of 0.1%. Only the scale would fold exactly (zero-padding (x - 255 mean) * s equals zero-padding
x - 255 mean), saving one multiply per input value; the nodes are cheap next to the network (their
measured share is in docs/performance-per-image.md), so the graph keeps them plain and exact.
"""

from __future__ import annotations

import warnings

import onnx
import torch

from artifact import PREFIX, ModelCard, Preprocessing

INPUT_NAME = "input"  # artifact.ModelCard's default input_name
OUTPUT_NAME = "logits"  # artifact.ModelCard's default output_name
TRACE_BATCH = 2  # a batch-1 example lets the exporter specialise the batch to 1
MAX_BATCH = 4096  # upper bound torch.export needs for the symbolic batch; far above any server batch
# ONNX files are protobufs: one message cannot exceed 2 GiB, so anything larger needs a side
# `.data` file, which the issue rules out (resnet152 fp32 is about 241 MB).
PROTOBUF_LIMIT = 2**31 - 1


class PixelInput(torch.nn.Module):
    """A network behind ToTensor + Normalize, taking uint8 RGB pixels in the preprocessing's layout."""

    def __init__(self, network: torch.nn.Module, pre: Preprocessing) -> None:
        super().__init__()
        self.network = network
        self.nhwc = pre.layout == "NHWC"
        # (x / 255 - mean) / std as (x - 255 mean) * (1 / (255 std)): one subtract and one multiply.
        self.register_buffer("offset", 255.0 * torch.tensor(pre.mean).reshape(1, 3, 1, 1))
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(pre.std)).reshape(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2) if self.nhwc else pixels  # uint8: the cheapest place to move bytes
        return self.network((x.float() - self.offset) * self.scale)


def with_input(network: torch.nn.Module, pre: Preprocessing) -> torch.nn.Module:
    """The module whose input is what `pre` says: the network itself for float32, else PixelInput."""
    if pre.input_dtype == "float32" and pre.layout == "NCHW":
        return network.eval()
    if pre.input_dtype != "uint8":
        raise ValueError(f"no export for input {pre.input_dtype} {pre.layout}; expected uint8, or float32 NCHW")
    return PixelInput(network, pre).eval()


def to_onnx(model: torch.nn.Module, pre: Preprocessing, opset: int) -> onnx.ModelProto:
    """Export an eval-mode module from `with_input`: input pre.input_dtype in pre.layout with a
    dynamic batch -> logits [batch, classes]."""
    model = model.eval()
    dtype = torch.uint8 if pre.input_dtype == "uint8" else torch.float32
    example = torch.zeros(pre.input_shape(TRACE_BATCH), dtype=dtype)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings(), torch.no_grad():
        # torch.export warns about internal deprecations that a user cannot act on.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,  # torch.export + onnxscript; folds BatchNorm into Conv when optimising
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    if proto.ByteSize() > PROTOBUF_LIMIT:
        raise ValueError(f"the graph is {proto.ByteSize() / 2**30:.1f} GiB, over ONNX's 2 GiB single-file limit")
    return proto


def batch_dim(proto: onnx.ModelProto) -> str:
    """The symbolic name of the input's first dimension; '' when the batch is fixed."""
    return proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param


def attach_card(proto: onnx.ModelProto, card: ModelCard) -> onnx.ModelProto:
    """Replace our metadata_props with the card's, keeping other tools' entries."""
    kept = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith(PREFIX)]
    del proto.metadata_props[:]
    for key, value in kept + sorted(card.to_metadata().items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "resnet-export"
    shortcut = f" shortcut {card.shortcut}" if card.shortcut else ""  # Table 3's option, when one was asked for
    proto.doc_string = f"{card.name}: {card.arch}{shortcut} ({card.precision}), {card.num_classes} classes"
    return proto


def read_card(proto: onnx.ModelProto) -> ModelCard:
    """The card back out of a ModelProto (the service reads it through ONNX Runtime instead)."""
    return ModelCard.from_metadata({p.key: p.value for p in proto.metadata_props})
