"""fp32 ONNX graph -> int8 by ONNX Runtime static quantization (QDQ, per-channel weights).

Activation ranges come from running calibration images (training images) through the
fp32 graph with MinMax calibration. Weights are signed int8 per output channel, activations
unsigned int8 ("U8S8"), the format ONNX Runtime's docs recommend for x86-64; with AVX-512 VNNI the
u8 x s8 products cannot saturate, so reduce_range is not needed (on older AVX2-only CPUs it would be).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process


class _Batches(CalibrationDataReader):
    """Feeds calibration batches to the quantizer, one {input_name: array} per call."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}


def to_int8(proto: onnx.ModelProto, input_name: str, calibration: Iterable[np.ndarray],
            exclude: Iterable[str] = ()) -> onnx.ModelProto:
    """Quantize statically with activation ranges from `calibration` (batches of the graph's input:
    uint8 pixels (format-2 cards and later), which the graph's own Cast and normalisation turn into the first
    convolution's float input, so the ranges are those of what the service sends). Nodes named in
    `exclude` stay in float32."""
    with tempfile.TemporaryDirectory(prefix="resnet-export-int8-") as tmp:
        fp32_path, prepared_path, int8_path = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(proto, fp32_path)
        # The recommended pre-pass: ONNX shape inference plus ORT's basic graph optimisations, so
        # the quantizer sees fused nodes and known shapes. The symbolic pass is for transformers.
        quant_pre_process(str(fp32_path), str(prepared_path), skip_symbolic_shape=True)
        reader = _Batches(input_name, calibration)
        quantize_static(
            str(prepared_path),
            str(int8_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
        )
        return onnx.load(int8_path)
