"""fp32 ONNX graph -> float16 weights and compute, float32 input and output kept.

Meant for the CUDA execution provider, where float16 convolutions run on tensor cores. ONNX Runtime's
CPU provider has no float16 Conv on x86: its InsertCastTransformer wraps such nodes in Casts back to
float32 and constant-folds the weight casts, so on this machine an fp16 model computes in float32
with float16-rounded weights (seen in the optimised graph: 20 float32 NCHWc Convs for resnet18,
one Cast left). Verification here therefore checks the weight rounding and the graph; the float16
activations themselves are only exercised where CUDA is available (export.verify picks it).
"""

from __future__ import annotations

import warnings

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of the graph whose input and output stay float32 (callers need not change)."""
    with warnings.catch_warnings():
        # It warns for every weight it clamps into float16's range; verification judges the result.
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(proto, keep_io_types=True)
    # keep_io_types appends its input Casts at the end of the node list, which onnx.checker rejects
    # ("Nodes in a graph must be topologically sorted"): put them back in order.
    model = OnnxModel(half)
    model.topological_sort()
    return model.model
