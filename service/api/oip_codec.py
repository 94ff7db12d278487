"""Open Inference Protocol v2 request and response bodies: JSON, Triton's binary tensor framing and
its classification extension. Plain Python and numpy, no web framework, so it is tested directly.

    body = JSON header [+ binary tensor data]   Inference-Header-Content-Length: <JSON header bytes>

Sources: kserve/open-inference-protocol specification/protocol/inference_rest.md (the request and
response objects); triton-inference-server/server docs/protocol/extension_binary_data.md
(`binary_data_size`, `binary_data`, `binary_data_output`, BYTES elements as a 4-byte little-endian
length then the bytes) and extension_classification.md (`classification: k` -> BYTES [batch, k] of
"value:index:label", best first); tritonclient/http (what the client really sends and parses).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from dataclasses import dataclass, field

import msgspec
import numpy as np

from service.errors import ServiceError

# OIP datatype <-> numpy dtype, as tritonclient.utils maps them (BYTES is special: length-prefixed).
DATATYPES = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}  # fmt: skip
DTYPE_NAMES = {dtype: name for name, dtype in DATATYPES.items()}
HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")


class BadRequest(ServiceError):
    """An inference request the protocol or this model cannot take: framing, JSON, names, types, shapes."""

    status, code = 400, "bad_request"


def datatype_of(dtype: np.dtype) -> str:
    """The OIP datatype of a numpy dtype (float32 -> FP32, uint8 -> UINT8, float16 -> FP16)."""
    return DTYPE_NAMES[np.dtype(dtype)]


@dataclass
class Tensor:
    """One decoded request input: numeric data as an array of its shape, BYTES as a list of bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]


@dataclass
class Output:
    """One requested output: whether it goes back as binary data, and its top-k if classification."""

    name: str
    binary: bool
    classification: int = 0  # k > 0: answer the top k as "value:index:label" strings


@dataclass
class Request:
    id: str | None
    inputs: list[Tensor]
    outputs: list[Output] | None  # None: every output, as `binary_data_output` says
    binary_output: bool = False  # the request's `binary_data_output`
    parameters: dict = field(default_factory=dict)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary data after it, from Inference-Header-Content-Length."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
    if not 0 < length <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {length}, but the body has {len(body)} bytes")
    return body[:length], body[length:]


def _field(obj: dict, key: str, kind, where: str, required: bool = True):
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BadRequest(f"{where}: {key!r} must be a {expected}, got {value!r}"[:300])
    return value


def parse_request(header: bytes, binary: bytes) -> Request:
    """The inference request object, its inputs decoded (the binary data consumed in input order)."""
    try:
        obj = msgspec.json.decode(header)
    except msgspec.DecodeError as error:
        raise BadRequest(f"the inference request is not valid JSON: {error}") from None
    if not isinstance(obj, dict):
        raise BadRequest("the inference request must be a JSON object")
    parameters = _field(obj, "parameters", dict, "request", required=False) or {}
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"request: 'id' must be a string, got {request_id!r}"[:300])
    inputs = _field(obj, "inputs", list, "request")
    if not inputs:
        raise BadRequest("request: 'inputs' is empty")
    offset, tensors = 0, []
    for index, item in enumerate(inputs):
        tensor, offset = _parse_input(item, index, binary, offset)
        tensors.append(tensor)
    if offset != len(binary):
        raise BadRequest(f"the inputs' binary_data_size add up to {offset} bytes, the body carries {len(binary)}")
    outputs = _field(obj, "outputs", list, "request", required=False)
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise BadRequest(f"request: 'binary_data_output' must be a boolean, got {binary_output!r}")
    requested = None if outputs is None else [_parse_output(o, i, binary_output) for i, o in enumerate(outputs)]
    return Request(request_id, tensors, requested, binary_output, parameters)


def _parse_input(item, index: int, binary: bytes, offset: int) -> tuple[Tensor, int]:
    where = f"input {index}"
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be a JSON object")
    name = _field(item, "name", str, where)
    where = f"input {name!r}"
    datatype = _field(item, "datatype", str, where)
    if datatype != "BYTES" and datatype not in DATATYPES:
        raise BadRequest(f"{where}: unknown datatype {datatype!r}; expected BYTES or one of {', '.join(DATATYPES)}")
    shape = _field(item, "shape", list, where)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"{where}: 'shape' must be a list of non-negative integers, got {shape!r}"[:300])
    count = math.prod(shape)
    params = _field(item, "parameters", dict, where, required=False) or {}
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"{where}: 'binary_data_size' must be a non-negative integer, got {size!r}")
        if "data" in item:
            raise BadRequest(f"{where}: carries both 'data' and 'binary_data_size'")
        if offset + size > len(binary):
            raise BadRequest(
                f"{where}: binary_data_size {size} at offset {offset} runs past the {len(binary)} bytes of binary data"
            )
        raw = binary[offset : offset + size]
        if datatype == "BYTES":
            data = _bytes_from_binary(raw, count, where)
        else:
            data = _array_from_binary(raw, datatype, count, where)
        offset += size
    elif "data" in item:
        if datatype == "BYTES":
            data = _bytes_from_json(item["data"], count, where)
        else:
            data = _array_from_json(item["data"], datatype, count, where)
    else:
        raise BadRequest(f"{where}: has neither 'data' nor a 'binary_data_size' parameter")
    if datatype != "BYTES":
        data = data.reshape(shape)
    return Tensor(name, datatype, tuple(shape), data), offset


def _array_from_binary(raw: bytes, datatype: str, count: int, where: str) -> np.ndarray:
    dtype = DATATYPES[datatype].newbyteorder("<")  # the extension's byte order is little-endian
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(
            f"{where}: shape holds {count} {datatype} elements ({count * dtype.itemsize} bytes), "
            f"binary_data_size is {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).astype(DATATYPES[datatype], copy=False)


def _array_from_json(data, datatype: str, count: int, where: str) -> np.ndarray:
    # The specification allows the data flattened or nested in row-major order: ravel either.
    try:
        array = np.asarray(data, dtype=DATATYPES[datatype]).ravel()
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(f"{where}: 'data' is not a (nested) list of {datatype} numbers") from None
    if array.size != count:
        raise BadRequest(f"{where}: shape holds {count} elements, 'data' has {array.size}")
    return array


def _bytes_from_binary(raw: bytes, count: int, where: str) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest(f"{where}: BYTES element {len(elements)} is cut off inside its 4-byte length")
        (length,) = _LENGTH.unpack_from(raw, offset)
        if offset + 4 + length > len(raw):
            raise BadRequest(f"{where}: BYTES element {len(elements)} announces {length} bytes, fewer remain")
        elements.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    if len(elements) != count:
        raise BadRequest(f"{where}: shape holds {count} elements, the binary data has {len(elements)}")
    return elements


def _bytes_from_json(data, count: int, where: str) -> list[bytes]:
    # JSON cannot carry raw image bytes, so a BYTES element sent as JSON is the file in base64: the
    # convention of KServe's own v2 image examples (the binary extension needs no encoding at all).
    flat = list(_flatten(data))
    if len(flat) != count:
        raise BadRequest(f"{where}: shape holds {count} elements, 'data' has {len(flat)}")
    out = []
    for i, element in enumerate(flat):
        if not isinstance(element, str):
            kind = type(element).__name__
            raise BadRequest(f"{where}: BYTES element {i} in JSON must be a base64 string, got {kind}")
        try:
            out.append(base64.b64decode(element, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest(f"{where}: BYTES element {i} is not valid base64") from None
    return out


def _flatten(data):
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _parse_output(item, index: int, binary_default: bool) -> Output:
    where = f"output {index}"
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be a JSON object")
    name = _field(item, "name", str, where)
    params = _field(item, "parameters", dict, f"output {name!r}", required=False) or {}
    binary = params.get("binary_data", binary_default)
    if not isinstance(binary, bool):
        raise BadRequest(f"output {name!r}: 'binary_data' must be a boolean, got {binary!r}")
    k = params.get("classification", 0)
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise BadRequest(f"output {name!r}: 'classification' must be a non-negative integer, got {k!r}")
    return Output(name, binary, k)


def classification(probabilities: np.ndarray, k: int, labels: tuple[str, ...]) -> list[list[bytes]]:
    """Each row's top k as b"value:index:label", best first; ties go to the lower index (as /classify)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [f"{float(row[i]):.8g}:{i}:{labels[i]}".encode() for i in indices.tolist()]
        for row, indices in zip(probabilities, order)
    ]


def encode_response(
    model: str,
    version: str,
    request_id: str | None,
    outputs: list[tuple[str, str, list[int], object, bool]],
    parameters: dict | None = None,
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length.

    Each output is (name, datatype, shape, data, binary); data is a numpy array or, for BYTES, rows
    of bytes elements."""
    described, chunks = [], []
    for name, datatype, shape, data, binary in outputs:
        entry: dict = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            if datatype == "BYTES":
                raw = _bytes_to_binary(data)
            else:
                raw = np.ascontiguousarray(data, dtype=DATATYPES[datatype].newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [element.decode() for row in data for element in row]
        else:
            entry["data"] = np.asarray(data).ravel().tolist()
        described.append(entry)
    header: dict = {"model_name": model, "model_version": version}
    if request_id is not None:
        header["id"] = request_id
    if parameters:
        header["parameters"] = parameters
    header["outputs"] = described
    encoded = msgspec.json.encode(header)
    if not chunks:
        return encoded, None
    return b"".join([encoded, *chunks]), len(encoded)


def _bytes_to_binary(rows: list[list[bytes]]) -> bytes:
    return b"".join(_LENGTH.pack(len(element)) + element for row in rows for element in row)
