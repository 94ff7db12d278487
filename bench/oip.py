"""One image as an Open Inference Protocol v2 request, framed as tritonclient frames it: the JSON
header, then the image as one binary BYTES element (4-byte little-endian length, then the file),
asking for the top 5 as binary classification strings, what /classify answers by default.
The load generator (bench/load.py --protocol oip) sends these; service/api/oip_codec.py reads them."""

from __future__ import annotations

import json
import struct

HEADER_LENGTH = "Inference-Header-Content-Length"
TOP_K = 5  # /classify's default top_k, so both routes do the same work


def path(model: str) -> str:
    """The inference route of a served model."""
    return f"/v2/models/{model}/infer"


def frame(image: bytes, top_k: int = TOP_K) -> tuple[bytes, int]:
    """The request body for one image file, and the length of its JSON header."""
    element = struct.pack("<I", len(image)) + image
    header = json.dumps({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(element)}}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": top_k, "binary_data": True}}],
    }).encode()  # fmt: skip
    return header + element, len(header)
