"""Torch network -> ONNX graph with a dynamic batch, and the model card written into it."""

from __future__ import annotations

import warnings

import onnx
import torch

from artifact import PREFIX, ModelCard

INPUT_NAME = "input"  # artifact.ModelCard's default input_name
OUTPUT_NAME = "logits"  # artifact.ModelCard's default output_name
TRACE_BATCH = 2  # issue 3: a batch-1 example lets the exporter specialise the batch to 1
MAX_BATCH = 4096  # upper bound torch.export needs for the symbolic batch; far above any server batch
# ONNX files are protobufs: one message cannot exceed 2 GiB, so anything larger needs a side
# `.data` file, which the issue rules out (resnet152 fp32 is about 241 MB).
PROTOBUF_LIMIT = 2**31 - 1


def to_onnx(model: torch.nn.Module, input_size: int, opset: int) -> onnx.ModelProto:
    """Export an eval-mode network: input float32 [batch, 3, S, S] -> logits [batch, classes]."""
    model = model.eval()
    example = torch.zeros(TRACE_BATCH, 3, input_size, input_size)
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
    proto.doc_string = f"{card.name}: {card.arch} ({card.precision}), {card.num_classes} classes"
    return proto


def read_card(proto: onnx.ModelProto) -> ModelCard:
    """The card back out of a ModelProto (the service reads it through ONNX Runtime instead)."""
    return ModelCard.from_metadata({p.key: p.value for p in proto.metadata_props})
