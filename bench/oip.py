"""Requests of the Open Inference Protocol v2, framed as tritonclient frames them: the JSON header,
then the binary tensor data (Triton's binary tensor extension), asking for the top 5 as binary
classification strings, what /classify answers by default. Two inputs a served model takes:
- `frame`: one image file as one BYTES element of the `image` input (4-byte little-endian length,
  then the file), decoded and preprocessed by the service as /classify does;
- `frame_pixels`: one image already preprocessed, as the model's own input tensor [1, ...] in its
  dtype, which the service hands straight to the batcher.
The load generator (bench/load.py --protocol oip, oip-pixels) sends these; service/api/oip_codec.py reads them."""

from __future__ import annotations

import json
import struct

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
TOP_K = 5  # /classify's default top_k, so both routes do the same work
# The protocol's tensor data types of the dtypes a model input can have (inference_rest.md, "Tensor
# Data Types"); the binary extension sends them little-endian.
DATATYPES = {np.dtype(np.uint8): "UINT8", np.dtype(np.float16): "FP16", np.dtype(np.float32): "FP32"}


def path(model: str) -> str:
    """The inference route of a served model."""
    return f"/v2/models/{model}/infer"


def frame(image: bytes, top_k: int = TOP_K) -> tuple[bytes, int]:
    """The request body for one image file, and the length of its JSON header."""
    element = struct.pack("<I", len(image)) + image
    return _frame({"name": "image", "datatype": "BYTES", "shape": [1]}, element, top_k)


def frame_pixels(pixels: np.ndarray, input_name: str, top_k: int = TOP_K) -> tuple[bytes, int]:
    """The request body for preprocessed images, and the length of its JSON header: one image (the
    model's input without its batch axis, 3-D), or several on a batch axis (4-D)."""
    if pixels.dtype not in DATATYPES:
        raise ValueError(f"pixels must be one of {', '.join(map(str, DATATYPES))}, got {pixels.dtype}")
    data = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()
    shape = list(pixels.shape) if pixels.ndim == 4 else [1, *pixels.shape]
    tensor = {"name": input_name, "datatype": DATATYPES[pixels.dtype], "shape": shape}
    return _frame(tensor, data, top_k)


def _frame(tensor: dict, data: bytes, top_k: int) -> tuple[bytes, int]:
    header = json.dumps({
        "inputs": [{**tensor, "parameters": {"binary_data_size": len(data)}}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": top_k, "binary_data": True}}],
    }).encode()  # fmt: skip
    return header + data, len(header)
