"""The HTTP face: a Litestar app over the data plane (service/dataplane.py).

    POST /classify?model=resnet18&top_k=5      POST /models/{name}/classify?top_k=5
    POST /classify?depth=152   POST /classify?model=auto&budget_ms=200   (docs/cascade.md)
    GET  /models   GET /models/{name}   GET /health/live   GET /health/ready   GET /metrics
    GET  /schema   (OpenAPI, Litestar's default)
    GET  /         the page that classifies images in a browser (service/web/page.py; off with --no-ui)
    /v2/...        the Open Inference Protocol v2 (service/api/oip.py, docs/oip.md)

The lifespan creates the Service (pipelines, ladder, cascade, pools) and releases it in its `finally`;
it lives on `app.state.service`. Handlers parse, call it, and encode. Every error, ours or
Litestar's, goes through `error_response` into one shape.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import asynccontextmanager

from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException, ValidationException
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.params import Parameter

from service import errors, metrics, trace
from service.api import answers, oip, schemas, server, uploads
from service.gate import access
from service.web import cors, page
from service.api.context import LOG_FIELDS, REQUEST_ID, RequestContext
from service.api.openapi import ClassifyOperation
from service.config import ServeConfig
from service.dataplane import Service
from service.depth import cascade_file, ladder as ladders
from service.depth.cascade import Policy
from service.engine.runtime import LoadedModel

log = logging.getLogger("service.api.app")

DEFAULT_TOP_K = 5
_ERROR_RESPONSES = {
    status: ResponseSpec(schemas.ErrorBody, description=text)
    for status, text in {
        400: "undecodable or corrupt image, a malformed multipart body, or a JSON body that is malformed, of the "
        "wrong shape or not base64",
        401: "with --api-keys-file: no Authorization: Bearer KEY, or a key not in the file (WWW-Authenticate)",
        404: "unknown model or depth (the body lists the available ones)",
        408: "the body did not arrive within body_timeout_s (the connection is closed)",
        413: "body over max_body_bytes, image over max_pixels, or more than max_images files",
        415: "unsupported media type",
        422: "bad query parameter (top_k outside 1..num_classes, wrong type, model and depth disagree)",
        429: "over --rate-limit-rps for this key or client address: see Retry-After",
        431: "more than 100 headers, or over 16 KiB of them",
        500: "the model's batching loop died (the service needs a restart), or inference failed",
        503: "the model's queue is full, the read budget is taken, the service is warming up, or it is shutting "
        "down (draining; the connection is closed): see Retry-After",
        504: "the request waited past request_timeout_s or its budget_ms",
    }.items()
}


def _service(request: Request) -> Service:
    return request.app.state.service


async def _classify(
    request: Request, model: str | None, k: int | None, depth: int | None, budget_ms: float | None,
    abstain: bool, asks: answers.Asks,
) -> schemas.Classification | schemas.BatchClassification:
    """Parse the body, classify through the data plane, encode the answer."""
    service = _service(request)
    async with service.call(model, depth) as call:
        card = call.card
        k = min(DEFAULT_TOP_K, card.num_classes) if k is None else k
        if not 1 <= k <= card.num_classes:
            raise errors.InvalidParameter(
                f"top_k must be between 1 and {card.num_classes} for {call.name}, got {k}", parameter="top_k"
            )
        kind = uploads.body_kind(request.content_type[0])
        config = service.config
        limit = config.max_body_bytes
        if kind == "json":  # base64 images: a larger limit in bytes (uploads.json_body_limit)
            limit = uploads.json_body_limit(config.max_body_bytes, config.max_images, config.read_budget_bytes)
            uploads.check_json_length(request.content_length, limit, config.max_body_bytes)
        call.admit(request.content_length, max_body_bytes=limit)
        body = call.read(request.stream())
        if kind == "raw":
            payloads = [await uploads.read_raw(body, config.max_body_bytes)]
        elif kind == "json":  # {"images": [base64, ...]} or {"image": base64}
            payloads = await uploads.read_json(body, limit, config.max_body_bytes, config.max_images)
        else:
            boundary = request.content_type[1].get("boundary")
            payloads = await uploads.read_multipart(body, boundary, config.max_body_bytes, config.max_images)
        result = await call.classify(images=payloads, budget_ms=budget_ms, abstain=abstain, explain=asks.explain)
    request.scope[LOG_FIELDS] = {"model": result.model, "images": len(result.rows)}
    return answers.answer(result, k, asks)


_DEPTH = Parameter(default=None, ge=1, description="pick the ladder's model of this depth (GET /models lists them)")
_BUDGET = Parameter(
    default=None, gt=0, description="latency budget, ms: a named model's deadline; model=auto escalates only within it"
)
_ABSTAIN = Parameter(
    default=False, description="say whether each answer is below its model's calibrated confidence (always with --abstain)"
)
_CAM = Parameter(default=False, description="each of the top predictions carries its class activation map (where the model looked)")
_CAM_PNG = Parameter(default=False, description="each of the top predictions carries its map as a PNG heatmap over the crop the model saw")
_EMBEDDING = Parameter(default=False, description="each image carries the answering model's L2-normalised embedding")
_TOP_K = Parameter(
    default=None, ge=1, description="classes to return, 1 to the model's class count (default 5, or all if fewer)"
)
_CLASSIFY = dict(status_code=200, responses=_ERROR_RESPONSES, operation_class=ClassifyOperation, description=(
    "Body: one image as the raw body (Content-Type image/jpeg, image/png, ...), multipart/form-data "
    'with one or more files, or application/json {"images": [base64, ...]} (or {"image": base64}). '
    "One image answers {model, predictions}; several answer {model, results}."
))  # fmt: skip


@post("/classify", **_CLASSIFY)
async def classify(
    request: Request,
    model: str | None = Parameter(default=None, description="served model name, or auto (the depth cascade)"),
    top_k: int | None = _TOP_K,
    depth: int | None = _DEPTH,
    budget_ms: float | None = _BUDGET,
    abstain: bool = _ABSTAIN,
    cam: bool = _CAM,
    cam_png: bool = _CAM_PNG,
    embedding: bool = _EMBEDDING,
) -> schemas.Classification | schemas.BatchClassification:
    """Classify the posted image(s) with `model` (the configured default if absent)."""
    return await _classify(request, model, top_k, depth, budget_ms, abstain, answers.Asks(cam, cam_png, embedding))


@post("/models/{name:str}/classify", **_CLASSIFY)
async def classify_with(
    request: Request, name: str, top_k: int | None = _TOP_K, depth: int | None = _DEPTH,
    budget_ms: float | None = _BUDGET, abstain: bool = _ABSTAIN, cam: bool = _CAM, cam_png: bool = _CAM_PNG,
    embedding: bool = _EMBEDDING,
) -> schemas.Classification | schemas.BatchClassification:
    """Classify the posted image(s) with the model in the path."""
    return await _classify(request, name, top_k, depth, budget_ms, abstain, answers.Asks(cam, cam_png, embedding))


@get("/models")
async def list_models(request: Request) -> schemas.ModelList:
    """Every served model, without class lists, and the ladder with its cascade."""
    service = _service(request)
    default = service.ladder.default_model
    rules = service.cascade.policy.abstain
    infos = [
        schemas.model_info(m.card, m.providers, name == default, abstain_threshold=_threshold(rules.get(name)),
                           device_memory_bytes=m.device_memory_bytes, explains=m.explains,
                           **_limits(service, name))  # fmt: skip
        for name, m in service.models.items()
    ]
    rungs = [schemas.Rung(r.name, r.depth, r.precision, r.threshold, r.gflops, r.batch_ms) for r in service.rungs()]
    policy = service.cascade.policy
    auto = schemas.Auto(policy.signal, policy.calibrated, policy.source)
    return schemas.ModelList(default, infos, rungs, service.ladder.rule, auto)


@get("/models/{name:str}", responses={404: _ERROR_RESPONSES[404]})
async def describe_model(request: Request, name: str) -> schemas.ModelDetail:
    """One model, with its classes in logit order."""
    service = _service(request)
    if name not in service.models:
        raise errors.UnknownModel(
            f"unknown model {name!r}; available: {', '.join(service.models)}", available=list(service.models)
        )
    model, rule = service.models[name], service.cascade.policy.abstain.get(name)
    default = name == service.ladder.default_model
    return schemas.model_info(model.card, model.providers, default, detail=True, abstain_threshold=_threshold(rule),
                              device_memory_bytes=model.device_memory_bytes, explains=model.explains,
                              **_limits(service, name))  # fmt: skip


def _threshold(rule) -> float | None:
    return None if rule is None else rule.threshold


def _limits(service, name: str) -> dict[str, int]:
    """A model's batch limit and queue, as its pipeline resolved them for its device."""
    pipeline = service.pipelines[name]
    return {"max_batch_size": pipeline.max_batch_size, "queue_size": pipeline.queue_size}


@get("/health/live", responses={503: ResponseSpec(schemas.Health, description="a batching loop died")})
async def live(request: Request) -> Response[schemas.Health]:
    """200 while the process answers and every batching loop runs."""
    service = _service(request)
    return _health(service, "live")


@get("/health/ready", responses={503: ResponseSpec(schemas.Health, description="warming up, or a batching loop died")})
async def ready(request: Request) -> Response[schemas.Health]:
    """200 once every model is loaded and warm, 503 before, and 503 if a batching loop died."""
    service = _service(request)
    return _health(service, "ready" if service.ready else "warming_up")


def _health(service: Service, status: str) -> Response[schemas.Health]:
    """A dead batcher fails both probes (the pod must be replaced) and says why."""
    warm = {name: m.warm for name, m in service.models.items()}
    if service.failures:
        return Response(schemas.Health("failed", warm, service.failures), status_code=503)
    ok = status != "warming_up"
    headers = None if ok else {"Retry-After": "1"}
    return Response(schemas.Health(status, warm), status_code=200 if ok else 503, headers=headers)


@get("/metrics", media_type=metrics.CONTENT_TYPE)
async def prometheus(request: Request) -> str:
    """Prometheus text exposition."""
    return _service(request).metrics.render()


def _count_refused(request: Request, status: int) -> None:
    service = _service(request)
    model = request.path_params.get("name") or request.query_params.get("model")
    service.metrics.requests.inc(service.label(model), str(status))


def error_response(request: Request, exc: Exception) -> Response:
    """The one exception handler: every error becomes {"error": {...}} with its status."""
    if isinstance(exc, errors.ServiceError):
        error = exc
    elif isinstance(exc, ValidationException):
        error = errors.InvalidParameter(f"invalid request parameter: {exc.detail}", errors=exc.extra or [])
        if request.url.path.endswith("/classify"):  # refused before the handler ran: count it here
            _count_refused(request, error.status)
    elif isinstance(exc, NotFoundException):
        error = errors.NotFound(f"no route for {request.method} {request.url.path}")
    elif isinstance(exc, MethodNotAllowedException):
        error = errors.MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
    elif isinstance(exc, HTTPException):
        error = errors.ServiceError(str(exc.detail))
        error.status, error.code = exc.status_code, "http_error"
    else:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        error = errors.ServiceError("internal error; the request id identifies it in the logs")
    request_id = request.scope.get(REQUEST_ID) or uuid.uuid4().hex
    headers = {**error.headers, "X-Request-ID": request_id, **trace.response_headers(request.scope)}
    if isinstance(exc, MethodNotAllowedException) and exc.headers:  # RFC 9110 15.5.6: 405 says Allow
        headers["Allow"] = exc.headers.get("allow") or exc.headers.get("Allow", "")
    if oip.owns(request.url.path):  # the Open Inference Protocol's routes answer its own shape
        return oip.error_response(error, headers)
    return Response(errors.error_body(error, request_id), status_code=error.status, headers=headers)


def create_app(
    config: ServeConfig,
    models: dict[str, LoadedModel],
    ladder: ladders.Ladder | None = None,
    policy: Policy | None = None,
) -> Litestar:
    """The Litestar app serving `models` (from runtime.load_models) with `config`; the ladder and the
    cascade policy default to ladder.build and cascade_file.read (LadderError, CascadeFileError)."""
    ladder = ladder or ladders.build(models, config.ladder, config.default_model)
    policy = policy or cascade_file.read(config.models, ladder, models)
    gate = access.Gate.from_config(config)  # keys and limits (service/gate/access.py); raises KeysFileError

    @asynccontextmanager
    async def lifespan(app: Litestar):
        service = Service(config, models, ladder, policy)
        app.state.service = service
        await service.start()
        gate.start(service.metrics)  # watches the keys file
        try:
            yield
        finally:
            await gate.close()
            await service.close()
            trace.flush()  # the process exits by SIGTERM, which skips atexit
            log.info("stopped: queues drained, pools closed")

    handlers = [classify, classify_with, list_models, describe_model, live, ready, prometheus, oip.router]
    return Litestar(
        route_handlers=[*handlers, page.router()] if config.ui else handlers,
        cors_config=cors.config(config.cors_origins),
        lifespan=[lifespan],
        exception_handlers={Exception: error_response},
        # trace.TraceContext outermost, so the access line of RequestContext carries the trace id;
        # access.Guard refuses from the headers, before a route reads the body.
        middleware=[trace.TraceContext, RequestContext, DefineMiddleware(
            server.BodyDeadline, timeout_s=config.body_timeout_s, max_body_bytes=config.max_body_bytes
        ), *([DefineMiddleware(access.Guard, gate=gate)] if gate.active else [])],
        # The classify routes enforce max_body_bytes themselves (uploads.py), with our error shape;
        # no other route reads a body.
        request_max_body_size=None,
        openapi_config=OpenAPIConfig(title="resnet-serve", version="0.1.0"),
        logging_config=None,  # logs.configure() owns logging: JSON lines
    )
