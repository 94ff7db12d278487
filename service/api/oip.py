"""The Open Inference Protocol v2 (KServe's "V2 inference protocol", Triton's HTTP API) as a Litestar
Router: a second face on the same per-model pipelines as /classify (service/engine/pipeline.py).

    GET  /v2   /v2/health/live   /v2/health/ready
    GET  /v2/models/{name}[/versions/1]   /v2/models/{name}[/versions/1]/ready
    POST /v2/models/{name}[/versions/1]/infer

Each model has two inputs, a request carries one: `image` (BYTES [-1], each element one whole image
file, decoded and preprocessed exactly as /classify does, through the same decode pool) or the
graph's own input (its name, datatype and shape read from the ONNX Runtime session, so a uint8 or
fp16 model is described as it is), which goes straight to the batcher. One output, `probabilities`
(FP32 [-1, K], the softmax of the logits), also as top-k strings with `classification: k`.
A version is the single "1": one file per served name, loaded once (docs/oip.md).
Errors on these routes are {"error": "<message>"}, as the specification says (app.error_response).
"""

from __future__ import annotations

import asyncio
import importlib.metadata

import msgspec
import numpy as np
from litestar import MediaType, Request, Response, Router, get, post
from litestar.openapi import ResponseSpec

from service import errors
from artifact import CAM_CLASSES_OUTPUT, CAM_OUTPUT, EMBEDDING_OUTPUT
from service.api import explain, uploads
from service.api.context import LOG_FIELDS
from service.api.oip_codec import (
    HEADER_LENGTH, BadRequest, Output, classification, datatype_of, encode_response, parse_request, split_body,
)  # fmt: skip
from service.dataplane import AUTO, Call, Service
from service.engine.runtime import LoadedModel

PREFIX = "/v2"
VERSION = "1"  # the only version of each model (docs/oip.md, "Versions")
IMAGE_INPUT = "image"
OUTPUT = "probabilities"
PLATFORM = "onnxruntime_onnx"  # Triton's name for an ONNX model run by ONNX Runtime
EXTENSIONS = ["binary_tensor_data", "classification"]
# Outputs beside `probabilities` that a model exported with them answers, and what the data plane
# computes for each (LoadedModel.explains).
EXPLAINED = {EMBEDDING_OUTPUT: "embedding", CAM_OUTPUT: "cam", CAM_CLASSES_OUTPUT: "cam"}
_INLINE_HEADER_BYTES = 65536  # a larger JSON header (pixels as JSON) is parsed in the decode pool


class ErrorBody(msgspec.Struct):
    """The protocol's error shape (inference_rest.md): a message, no code."""

    error: str


# The answers each route may give besides 200, declared for /schema (and Schemathesis, tests/service/test_fuzz.py).
_ERRORS = {
    400: "a malformed request: JSON, binary framing, names, datatypes, shapes, an undecodable image",
    404: "unknown model or version",
    413: "a body over max_body_bytes, more than max_images images, an image over max_pixels",
    415: "a compressed body (Content-Encoding other than identity)",
    503: "not ready, or the model's queue is full (see Retry-After)",
    504: "no answer within the request's deadline",
}
_NOT_READY = ResponseSpec(None, description="not ready yet (see Retry-After); empty body")


def _responses(*statuses: int) -> dict[int, ResponseSpec]:
    return {status: ResponseSpec(ErrorBody, description=_ERRORS[status]) for status in statuses}


def owns(path: str) -> bool:
    """Whether a request path is this protocol's, so that its errors take the protocol's shape."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_response(error: errors.ServiceError, headers: dict[str, str]) -> Response:
    """The protocol's error shape: {"error": "<message>"}, with the status and headers of `error`."""
    return Response({"error": error.message}, status_code=error.status, headers=headers)


def _service(request: Request) -> Service:
    return request.app.state.service


def _check_version(name: str, version: str | None) -> None:
    if version is not None and version != VERSION:
        raise errors.UnknownModel(f"model {name!r} has no version {version!r}; its only version is {VERSION!r}")


def _model(service: Service, name: str, version: str | None) -> LoadedModel:
    """The model a protocol name starts on: `auto` starts on the ladder's shallowest rung."""
    if name != AUTO and name not in service.models:
        raise errors.UnknownModel(f"unknown model {name!r}; available: {', '.join([*service.models, AUTO])}")
    _check_version(name, version)
    return service.models[service.ladder.rungs[0] if name == AUTO else name]


def pixel_input(model: LoadedModel) -> tuple[str, np.dtype, list[int]]:
    """The graph's input as the card describes it: name, numpy dtype, shape with -1 for the batch."""
    shape = model.card.preprocessing.input_shape(1)
    return model.card.input_name, np.dtype(model.input_dtype), [-1, *shape[1:]]


def _auto_metadata(service: Service, first: LoadedModel) -> dict:
    """`auto` takes image files only: each rung may preprocess differently, so no one pixel tensor fits."""
    metadata = _metadata(first)
    policy = service.cascade.policy
    metadata["name"] = AUTO
    metadata["inputs"] = metadata["inputs"][:1]
    metadata["parameters"].update(rungs=list(service.ladder.rungs), signal=policy.signal, calibrated=policy.calibrated)
    return metadata


def _pixels_description(prep) -> str:
    """How a client makes the pixel input itself, from the card (artifact.Preprocessing)."""
    steps = f"RGB, resize the shorter side to {prep.resize_size}, center crop {prep.input_size}, {prep.layout}"
    if prep.input_dtype == "uint8":  # the graph does ToTensor and Normalize itself
        return f"{steps}, 0..255 (the model normalises)"
    return f"{steps}, /255, normalised by mean {list(prep.mean)} std {list(prep.std)}"


_EXTRA_DESCRIPTIONS = {
    EMBEDDING_OUTPUT: "the pooled features before the classifier, L2-normalised (what similarity search needs)",
    CAM_OUTPUT: "class activation maps of the top k classes, highest first, at the last block's resolution (raw)",
    CAM_CLASSES_OUTPUT: "the class index of each map in 'cam'",
}


def _metadata(model: LoadedModel) -> dict:
    card = model.card
    name, dtype, shape = pixel_input(model)
    prep = card.preprocessing
    return {
        "name": card.name,
        "versions": [VERSION],
        "platform": PLATFORM,
        "inputs": [
            {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1],
             "parameters": {"description": "one whole image file per element, preprocessed as /classify does"}},
            {"name": name, "datatype": datatype_of(dtype), "shape": shape,
             "parameters": {"description": _pixels_description(prep)}},
        ],
        "outputs": [
            {"name": OUTPUT, "datatype": "FP32", "shape": [-1, card.num_classes],
             "parameters": {"description": "softmax probabilities in class-index order; 'classification: k' "
                            "answers the top k as 'probability:index:label'"}},
            *({"name": extra.name, "datatype": datatype_of(np.dtype(extra.dtype)),
               "shape": [-1, *(d if isinstance(d, int) else -1 for d in extra.shape[1:])],
               "parameters": {"description": _EXTRA_DESCRIPTIONS.get(extra.name, "")}}
              for extra in card.extra_outputs),
        ],
        "parameters": {"class_names": list(card.class_names), "source_sha256": card.source_sha256,
                       "precision": card.precision},
    }  # fmt: skip


@get("/")
async def server_metadata() -> dict:
    """Server metadata: name, version, the protocol extensions implemented."""
    try:
        version = importlib.metadata.version("resnet-serving")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"name": "resnet-serve", "version": version, "extensions": EXTENSIONS}


@get("/health/live", media_type=MediaType.TEXT)
async def live() -> Response:
    """200 while the process answers."""
    return Response(b"", status_code=200)


def _ready(ok: bool) -> Response:
    return Response(b"", status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "1"})


@get("/health/ready", media_type=MediaType.TEXT, responses={503: _NOT_READY})
async def ready(request: Request) -> Response:
    """200 once every model is warm, 503 (Retry-After) before: as /health/ready."""
    return _ready(_service(request).ready)


@get(["/models/{name:str}", "/models/{name:str}/versions/{version:str}"], responses=_responses(404))
async def model_metadata(request: Request, name: str, version: str | None = None) -> dict:
    """Model metadata: versions, platform, inputs and outputs with datatype and shape."""
    service = _service(request)
    model = _model(service, name, version)
    return _auto_metadata(service, model) if name == AUTO else _metadata(model)


@get(
    ["/models/{name:str}/ready", "/models/{name:str}/versions/{version:str}/ready"],
    media_type=MediaType.TEXT,
    responses={**_responses(404), 503: _NOT_READY},
)
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    """200 once this model is warm and the service ready, 503 before."""
    service = _service(request)
    return _ready(service.ready and _model(service, name, version).warm)


@post(
    ["/models/{name:str}/infer", "/models/{name:str}/versions/{version:str}/infer"],
    status_code=200,
    responses=_responses(400, 404, 413, 415, 503, 504),
)
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Inference: images (BYTES) or pixels in, probabilities or top-k classifications out."""
    service = _service(request)
    config = service.config
    async with service.call(name) as call:
        _check_version(name, version)
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise errors.UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported: send the body uncompressed")
        call.admit(request.content_length)
        body = await uploads.read_raw(call.read(request.stream()), config.max_body_bytes)
        header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
        if len(header) > _INLINE_HEADER_BYTES:
            parsed = await asyncio.get_running_loop().run_in_executor(service.decode_pool, parse_request, header, binary)
        else:
            parsed = parse_request(header, binary)
        outputs = _requested_outputs(parsed.outputs, parsed.binary_output, call.card)
        if len(parsed.inputs) != 1:
            names = ", ".join(repr(t.name) for t in parsed.inputs)
            raise BadRequest(f"send exactly one input, {IMAGE_INPUT!r} or the pixel input; got {names}")
        (tensor,) = parsed.inputs
        explain = frozenset(EXPLAINED[o.name] for o in outputs if o.name in EXPLAINED)
        options = {"budget_ms": _budget_ms(parsed.parameters), "abstain": _abstain(parsed.parameters), "explain": explain}
        if tensor.name == IMAGE_INPUT:
            result = await call.classify(images=_images(tensor, config.max_images), **options)
        elif call.auto:
            raise BadRequest(f"model {AUTO!r} takes only the {IMAGE_INPUT!r} input, got {tensor.name!r}")
        else:
            result = await call.classify(pixels=_pixels(tensor, call, config.max_images), **options)
    request.scope[LOG_FIELDS] = {"model": name, "images": len(result.rows), "protocol": "oip"}
    return _response(result, outputs, parsed.id)


def _response(result, outputs: list[Output], request_id: str | None) -> Response:
    probabilities = np.stack(result.rows).astype(np.float32, copy=False)
    tensors = []
    for output in outputs:
        if output.name in EXPLAINED:  # the answering model's own output, per image
            values = np.stack([_explained(o, output.name) for o in result.explanations])
            tensors.append((output.name, datatype_of(values.dtype), list(values.shape), values, output.binary))
        elif output.classification:
            top = classification(probabilities, output.classification, result.card.class_names)
            tensors.append((OUTPUT, "BYTES", [len(result.rows), output.classification], top, output.binary))
        else:
            tensors.append((OUTPUT, "FP32", list(probabilities.shape), probabilities, output.binary))
    parameters = {}
    if result.answers is not None:
        parameters["answered_by"] = result.answered_by
    if result.verdicts is not None:  # one per image, as answered_by: the protocol's parameters are flat
        parameters["abstained"] = [v.abstained for v in result.verdicts]
        parameters["abstention"] = [v.reason for v in result.verdicts]
    parameters = parameters or None
    content, header_length = encode_response(result.model if result.answers is None else AUTO, VERSION, request_id,
                                             tensors, parameters)  # fmt: skip
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})


def _budget_ms(parameters: dict) -> float | None:
    """The request parameter `budget_ms`, as /classify's query parameter (None: no budget)."""
    budget_ms = parameters.get("budget_ms")
    if budget_ms is None:
        return None
    if not isinstance(budget_ms, (int, float)) or isinstance(budget_ms, bool) or not budget_ms > 0:
        raise BadRequest(f"parameter 'budget_ms' must be a positive number of milliseconds, got {budget_ms!r}")
    return float(budget_ms)


def _abstain(parameters: dict) -> bool:
    """The request parameter `abstain`, as /classify's query parameter (always on with --abstain)."""
    abstain = parameters.get("abstain", False)
    if not isinstance(abstain, bool):
        raise BadRequest(f"parameter 'abstain' must be true or false, got {abstain!r}")
    return abstain


def _explained(outputs: dict, name: str) -> np.ndarray:
    if name == EMBEDDING_OUTPUT:  # L2-normalised, as /classify's embedding=true
        return np.asarray(explain.embedding(outputs[name]), dtype=np.float32)
    return outputs[name]


def _requested_outputs(outputs: list[Output] | None, binary_default: bool, card) -> list[Output]:
    num_classes = card.num_classes
    if outputs is None:
        return [Output(OUTPUT, binary_default)]
    if not outputs:
        raise BadRequest("request: 'outputs' is empty; leave it out for every output")
    seen = set()
    known = [OUTPUT, *EXPLAINED]
    for output in outputs:
        if output.name not in known:
            raise BadRequest(f"unknown output {output.name!r}; the outputs are {', '.join(map(repr, known))}")
        if output.name in EXPLAINED and output.classification:
            raise BadRequest(f"output {output.name!r}: 'classification' applies to {OUTPUT!r} only")
        if output.name in seen:
            raise BadRequest(f"output {output.name!r} is requested twice")
        seen.add(output.name)
        if output.classification > num_classes:
            raise BadRequest(
                f"output {output.name!r}: classification {output.classification} is more than the {num_classes} classes"
            )
    return outputs


def _batch(shape: tuple[int, ...], max_images: int, name: str) -> int:
    if not shape or shape[0] < 1:
        raise BadRequest(f"input {name!r}: the batch (first) dimension must be at least 1, got shape {list(shape)}")
    if shape[0] > max_images:
        raise errors.TooManyImages(f"input {name!r}: a request holds at most {max_images} images, got {shape[0]}")
    return shape[0]


def _images(tensor, max_images: int) -> list[bytes]:
    if tensor.datatype != "BYTES":
        raise BadRequest(f"input {IMAGE_INPUT!r} must be BYTES (one image file per element), got {tensor.datatype}")
    if len(tensor.shape) not in (1, 2) or len(tensor.shape) == 2 and tensor.shape[1] != 1:
        raise BadRequest(f"input {IMAGE_INPUT!r} must have shape [N] or [N, 1], got {list(tensor.shape)}")
    _batch(tensor.shape, max_images, IMAGE_INPUT)
    return tensor.data


def _pixels(tensor, call: Call, max_images: int) -> list[np.ndarray]:
    name, dtype, shape = pixel_input(call.model)
    if tensor.name != name:
        raise BadRequest(f"unknown input {tensor.name!r}; {call.model.name} takes {IMAGE_INPUT!r} or {name!r}")
    if tensor.datatype != datatype_of(dtype):
        raise BadRequest(f"input {name!r} must be {datatype_of(dtype)}, got {tensor.datatype}")
    if len(tensor.shape) != len(shape) or any(want not in (-1, got) for want, got in zip(shape, tensor.shape)):
        raise BadRequest(f"input {name!r} must have shape {shape} (-1: any size), got {list(tensor.shape)}")
    _batch(tensor.shape, max_images, name)
    return list(tensor.data)  # one [3, S, S] view per image: the batcher's unit, as decoded images are


router = Router(PREFIX, route_handlers=[server_metadata, live, ready, model_metadata, model_ready, infer])
