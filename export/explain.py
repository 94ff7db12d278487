"""The explanation outputs added to an exported graph: the pooled embedding and class activation maps.

A ResNet ends in global average pooling and one linear layer, so the class activation map of class
c (Zhou et al. 2016, "Learning Deep Features for Discriminative Localization", sec. 2) is
sum_k w_ck f_k(x, y): the last block's feature maps weighted by the classifier's row for c. Its mean
over (x, y) plus the bias b_c is the logit of c, so the bias only shifts the map and is left out.

`add_outputs` takes the fp32 graph from export.graph.to_onnx and adds, after "logits":

    embedding    float32 [batch, C]           the pooled features the classifier reads (renamed, no new node)
    cam          float32 [batch, k, h, w]     the maps of the k highest-scoring classes, highest first
    cam_classes  int64   [batch, k]           which class each map belongs to (ONNX TopK: ties to the lower index)

and one optional input, cam_k (int64 [1], default artifact.cam_k_default: 5, or the class count if lower): an
initializer that is also a graph input (ONNX IR >= 4), so a caller that feeds only the pixels gets
the default and the existing service runs the file unchanged. ONNX Runtime runs every node of the
graph whatever outputs are fetched, so the maps are computed on every run; they are k x C x h x w
multiply-adds (5 x 2048 x 49 for resnet152 at 224 px), and docs/export.md has the measured cost.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from artifact import CAM_CLASSES_OUTPUT, CAM_K_INPUT, CAM_OUTPUT, EMBEDDING_OUTPUT, ExtraOutput, cam_k_default
from export.graph import OUTPUT_NAME

# Node names of what add_outputs inserts, so int8 quantization can leave them in float.
NODE_PREFIX = "explain/"
_POOLS = ("GlobalAveragePool", "ReduceMean")
_PASS_THROUGH = ("Reshape", "Flatten", "Squeeze", "Gather", "Identity")  # between the pool and the classifier


class GraphShapeError(ValueError):
    """The graph does not end in pooling and one linear layer, so it has no maps to add."""


def add_outputs(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, tuple[ExtraOutput, ...]]:
    """The graph with embedding, cam and cam_classes outputs and the cam_k input; and what the card records."""
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {t.name: t for t in graph.initializer}
    head = producers.get(OUTPUT_NAME)
    if head is None or head.op_type != "Gemm":
        raise GraphShapeError(f"{OUTPUT_NAME!r} is made by {head.op_type if head else 'nothing'}, expected a Gemm")
    if _attribute(head, "transA", 0) != 0 or _attribute(head, "transB", 0) != 1 or head.input[1] not in initializers:
        raise GraphShapeError("the classifier Gemm is not x @ W^T with W a stored weight")
    weight = initializers[head.input[1]]  # [classes, C]
    classes, channels = weight.dims
    features = _features(head.input[0], producers)
    height, width = _spatial(proto, features)

    _rename(graph, head.input[0], EMBEDDING_OUTPUT)
    k_default = cam_k_default(classes)
    k = numpy_helper.from_array(np.array([k_default], dtype=np.int64), CAM_K_INPUT)
    flat = numpy_helper.from_array(np.array([0, channels, height * width], dtype=np.int64), NODE_PREFIX + "flat")
    square = numpy_helper.from_array(np.array([0, -1, height, width], dtype=np.int64), NODE_PREFIX + "square")
    graph.initializer.extend([k, flat, square])
    graph.input.append(helper.make_tensor_value_info(CAM_K_INPUT, TensorProto.INT64, [1]))
    p = NODE_PREFIX
    graph.node.extend([
        helper.make_node("TopK", [OUTPUT_NAME, CAM_K_INPUT], [p + "scores", CAM_CLASSES_OUTPUT], name=p + "topk", axis=1),
        helper.make_node("Gather", [weight.name, CAM_CLASSES_OUTPUT], [p + "rows"], name=p + "rows", axis=0),  # [N, k, C]
        helper.make_node("Reshape", [features, flat.name], [p + "features"], name=p + "features"),  # [N, C, hw]
        helper.make_node("MatMul", [p + "rows", p + "features"], [p + "maps"], name=p + "maps"),  # [N, k, hw]
        helper.make_node("Reshape", [p + "maps", square.name], [CAM_OUTPUT], name=p + "cam"),
    ])  # fmt: skip
    extras = (
        ExtraOutput(EMBEDDING_OUTPUT, "float32", ("batch", channels)),
        ExtraOutput(CAM_OUTPUT, "float32", ("batch", "k", height, width)),
        ExtraOutput(CAM_CLASSES_OUTPUT, "int64", ("batch", "k")),
    )
    elem = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}
    graph.output.extend(helper.make_tensor_value_info(e.name, elem[e.dtype], list(e.shape)) for e in extras)
    return proto, extras


def node_names(proto: onnx.ModelProto) -> list[str]:
    """The names of the nodes add_outputs inserted (int8 keeps them in float32)."""
    return [node.name for node in proto.graph.node if node.name.startswith(NODE_PREFIX)]


def _features(pooled: str, producers: dict) -> str:
    """Walk back from the classifier's input through shape-only nodes to the pooling; its input."""
    name = pooled
    for _ in range(16):
        node = producers.get(name)
        if node is None:
            break
        if node.op_type in _POOLS:
            return node.input[0]
        if node.op_type not in _PASS_THROUGH:
            break
        name = node.input[0]
    raise GraphShapeError(f"no global average pooling found before the classifier's input {pooled!r}")


def _spatial(proto: onnx.ModelProto, features: str) -> tuple[int, int]:
    """(h, w) of the feature maps, fixed since the input size is."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    for value in (*inferred.graph.value_info, *inferred.graph.output):
        if value.name == features:
            dims = value.type.tensor_type.shape.dim
            if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
                return dims[2].dim_value, dims[3].dim_value
    raise GraphShapeError(f"the feature maps {features!r} have no fixed [batch, C, h, w] shape")


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in graph.value_info:
        if value.name == old:
            value.name = new


def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default
