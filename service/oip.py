"""The Open Inference Protocol v2 (KServe's "V2 inference protocol", Triton's HTTP API) as a Litestar
Router: a second face on the same per-model pipelines as /classify (service/pipeline.py).

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

import numpy as np
from litestar import Request, Response, Router, get, post

from service import admission, errors, uploads
from service.oip_codec import (
    HEADER_LENGTH, BadRequest, Output, classification, datatype_of, encode_response, parse_request, split_body,
)  # fmt: skip
from service.pipeline import ModelPipeline, Service

PREFIX = "/v2"
VERSION = "1"  # the only version of each model (docs/oip.md, "Versions")
IMAGE_INPUT = "image"
OUTPUT = "probabilities"
AUTO = "auto"  # the depth cascade's model name, as /classify's model=auto (service/app.py AUTO)
PLATFORM = "onnxruntime_onnx"  # Triton's name for an ONNX model run by ONNX Runtime
EXTENSIONS = ["binary_tensor_data", "classification"]
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}
_LOG_FIELDS = "resnet_serving.log_fields"  # the scope key app.RequestContext logs (app.py imports us)
_INLINE_HEADER_BYTES = 65536  # a larger JSON header (pixels as JSON) is parsed in the decode pool


def owns(path: str) -> bool:
    """Whether a request path is this protocol's, so that its errors take the protocol's shape."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_response(error: errors.ServiceError, headers: dict[str, str]) -> Response:
    """The protocol's error shape: {"error": "<message>"}, with the status and headers of `error`."""
    return Response({"error": error.message}, status_code=error.status, headers=headers)


def _resolve(request: Request, name: str, version: str | None) -> ModelPipeline:
    # The one place a protocol model name becomes a pipeline. `auto` (the depth cascade, issue 10)
    # starts on the ladder's shallowest rung; _infer hands its images to the cascade.
    service, ladder = request.app.state.service, request.app.state.ladder
    if name != AUTO and name not in service.pipelines:
        available = ", ".join([*service.pipelines, AUTO])
        raise errors.UnknownModel(f"unknown model {name!r}; available: {available}")
    if version is not None and version != VERSION:
        raise errors.UnknownModel(f"model {name!r} has no version {version!r}; its only version is {VERSION!r}")
    return service.pipelines[ladder.rungs[0] if name == AUTO else name]


def pixel_input(pipeline: ModelPipeline) -> tuple[str, np.dtype, list[int]]:
    """The graph's input as the session reports it: name, numpy dtype, shape with -1 where dynamic."""
    card, session = pipeline.model.card, pipeline.model.session
    (node,) = [node for node in session.get_inputs() if node.name == card.input_name]
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in node.shape]
    return node.name, np.dtype(_ORT_TYPES[node.type]), shape


def _auto_metadata(request: Request, first: ModelPipeline) -> dict:
    """`auto` takes image files only: each rung may preprocess differently, so no one pixel tensor fits."""
    metadata = _metadata(first)
    cascade = request.app.state.cascade
    metadata["name"] = AUTO
    metadata["inputs"] = metadata["inputs"][:1]
    metadata["parameters"].update(
        rungs=list(request.app.state.ladder.rungs), signal=cascade.policy.signal, calibrated=cascade.policy.calibrated
    )
    return metadata


def _pixels_description(prep) -> str:
    """How a client makes the pixel input itself, from the card (artifact.Preprocessing)."""
    steps = f"RGB, resize the shorter side to {prep.resize_size}, center crop {prep.input_size}, {prep.layout}"
    if prep.input_dtype == "uint8":  # issue 16: the graph does ToTensor and Normalize itself
        return f"{steps}, 0..255 (the model normalises)"
    return f"{steps}, /255, normalised by mean {list(prep.mean)} std {list(prep.std)}"


def _metadata(pipeline: ModelPipeline) -> dict:
    card = pipeline.model.card
    name, dtype, shape = pixel_input(pipeline)
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


@get("/health/live")
async def live() -> Response:
    """200 while the process answers."""
    return Response(b"", status_code=200)


def _ready(ok: bool) -> Response:
    return Response(b"", status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "1"})


@get("/health/ready")
async def ready(request: Request) -> Response:
    """200 once every model is warm, 503 (Retry-After) before: as /health/ready."""
    return _ready(request.app.state.service.ready)


@get(["/models/{name:str}", "/models/{name:str}/versions/{version:str}"])
async def model_metadata(request: Request, name: str, version: str | None = None) -> dict:
    """Model metadata: versions, platform, inputs and outputs with datatype and shape."""
    pipeline = _resolve(request, name, version)
    return _auto_metadata(request, pipeline) if name == AUTO else _metadata(pipeline)


@get(["/models/{name:str}/ready", "/models/{name:str}/versions/{version:str}/ready"])
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    """200 once this model is warm and the service ready, 503 before."""
    service = request.app.state.service
    return _ready(service.ready and _resolve(request, name, version).model.warm)


@post(["/models/{name:str}/infer", "/models/{name:str}/versions/{version:str}/infer"], status_code=200)
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Inference: images (BYTES) or pixels in, probabilities or top-k classifications out."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    service: Service = request.app.state.service
    label, status = (name if name in service.pipelines or name == AUTO else "unknown"), 500
    try:
        pipeline = _resolve(request, name, version)
        response, count = await _infer(request, service, pipeline, started, name == AUTO)
        request.scope[_LOG_FIELDS] = {"model": name, "images": count, "protocol": "oip"}
        status = 200
        return response
    except errors.ServiceError as error:
        status = error.status
        raise
    finally:
        service.metrics.requests.inc(label, str(status))
        service.metrics.request_seconds.observe(loop.time() - started, label)


async def _infer(
    request: Request, service: Service, pipeline: ModelPipeline, started: float, auto: bool
) -> tuple[Response, int]:
    config, card = service.config, pipeline.model.card
    if not service.warm:  # a dead batcher is refused by admission.admit, with a 500 for its model only
        raise errors.NotReady()
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise errors.UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported: send the body uncompressed")
    # The same admission as /classify (service/admission.py): refused from the headers, before the body.
    ticket = admission.admit(pipeline, service.read_budget, request.content_length, config.max_body_bytes)
    deadline = started + config.request_timeout_s
    budget = None
    try:
        async with asyncio.timeout_at(deadline):
            body = await uploads.read_raw(ticket.read(request.stream()), config.max_body_bytes)
            header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
            if len(header) > _INLINE_HEADER_BYTES:
                loop = asyncio.get_running_loop()
                parsed = await loop.run_in_executor(service.decode_pool, parse_request, header, binary)
            else:
                parsed = parse_request(header, binary)
            outputs = _requested_outputs(parsed.outputs, parsed.binary_output, card.num_classes)
            if len(parsed.inputs) != 1:
                names = ", ".join(repr(t.name) for t in parsed.inputs)
                raise BadRequest(f"send exactly one input, {IMAGE_INPUT!r} or the pixel input; got {names}")
            (tensor,) = parsed.inputs
            budget = _budget(parsed.parameters, started)
            answered_by = None
            if auto:  # the cascade (service/cascade.py); the budget bends its depth, as for /classify
                if tensor.name != IMAGE_INPUT:
                    raise BadRequest(f"model {AUTO!r} takes only the {IMAGE_INPUT!r} input, got {tensor.name!r}")
                answers = await request.app.state.cascade.classify(_images(tensor, config.max_images), deadline, budget)
                rows, answered_by = [a.row for a in answers], [a.path[-1] for a in answers]
            else:  # a named model: the budget is this request's deadline
                limit = min(deadline, budget or deadline)
                async with asyncio.timeout_at(limit):
                    if tensor.name == IMAGE_INPUT:
                        rows = await pipeline.classify(_images(tensor, config.max_images), limit)
                    else:
                        rows = await pipeline.infer(_pixels(tensor, pipeline, config.max_images), limit)
    except TimeoutError:
        within = "the request's budget_ms" if budget and budget < deadline else ""
        raise errors.DeadlineExceeded(
            f"no answer within {within or f'request_timeout_s = {config.request_timeout_s} s'}"
        ) from None
    finally:
        ticket.release()
    probabilities = np.stack(rows).astype(np.float32, copy=False)
    tensors = []
    for output in outputs:
        if output.classification:
            top = classification(probabilities, output.classification, card.class_names)
            tensors.append((OUTPUT, "BYTES", [len(rows), output.classification], top, output.binary))
        else:
            tensors.append((OUTPUT, "FP32", list(probabilities.shape), probabilities, output.binary))
    parameters = None if answered_by is None else {"answered_by": answered_by}
    content, header_length = encode_response(AUTO if auto else card.name, VERSION, parsed.id, tensors, parameters)
    if header_length is None:
        return Response(content, media_type="application/json"), len(rows)
    headers = {HEADER_LENGTH: str(header_length)}
    return Response(content, media_type="application/octet-stream", headers=headers), len(rows)


def _budget(parameters: dict, started: float) -> float | None:
    """The request parameter `budget_ms` as a loop-time deadline (None: no budget), as /classify's."""
    budget_ms = parameters.get("budget_ms")
    if budget_ms is None:
        return None
    if not isinstance(budget_ms, (int, float)) or isinstance(budget_ms, bool) or not budget_ms > 0:
        raise BadRequest(f"parameter 'budget_ms' must be a positive number of milliseconds, got {budget_ms!r}")
    return started + budget_ms / 1000.0


def _requested_outputs(outputs: list[Output] | None, binary_default: bool, num_classes: int) -> list[Output]:
    if outputs is None:
        return [Output(OUTPUT, binary_default)]
    if not outputs:
        raise BadRequest("request: 'outputs' is empty; leave it out for every output")
    seen = set()
    for output in outputs:
        if output.name != OUTPUT:
            raise BadRequest(f"unknown output {output.name!r}; the only output is {OUTPUT!r}")
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


def _pixels(tensor, pipeline: ModelPipeline, max_images: int) -> list[np.ndarray]:
    name, dtype, shape = pixel_input(pipeline)
    if tensor.name != name:
        raise BadRequest(f"unknown input {tensor.name!r}; {pipeline.model.name} takes {IMAGE_INPUT!r} or {name!r}")
    if tensor.datatype != datatype_of(dtype):
        raise BadRequest(f"input {name!r} must be {datatype_of(dtype)}, got {tensor.datatype}")
    if len(tensor.shape) != len(shape) or any(want not in (-1, got) for want, got in zip(shape, tensor.shape)):
        raise BadRequest(f"input {name!r} must have shape {shape} (-1: any size), got {list(tensor.shape)}")
    _batch(tensor.shape, max_images, name)
    return list(tensor.data)  # one [3, S, S] view per image: the batcher's unit, as decoded images are


router = Router(PREFIX, route_handlers=[server_metadata, live, ready, model_metadata, model_ready, infer])
