"""The HTTP face: a Litestar app over the serving pipeline (service/pipeline.py).

    POST /classify?model=resnet18&top_k=5      POST /models/{name}/classify?top_k=5
    POST /classify?depth=152   POST /classify?model=auto&budget_ms=200   (docs/cascade.md)
    GET  /models   GET /models/{name}   GET /health/live   GET /health/ready   GET /metrics
    GET  /schema   (OpenAPI, Litestar's default)
    /v2/...        the Open Inference Protocol v2 (service/oip.py, docs/oip.md)

The lifespan creates the pipelines and pools and releases them in its `finally`; the Service lives on
`app.state.service`. Every error, ours or Litestar's, goes through `error_response` into one shape.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager

from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException, ValidationException
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.params import Parameter

from service import access, admission, cascade_file, errors, ladder as ladders, metrics, oip, schemas, server, trace
from service import uploads
from service.cascade import Cascade, Policy
from service.config import ServeConfig
from service.openapi import ClassifyOperation
from service.pipeline import Service
from service.runtime import LoadedModel

log = logging.getLogger("service.app")
access_log = logging.getLogger("service.access")

DEFAULT_TOP_K = 5
_REQUEST_ID = "resnet_serving.request_id"  # ASGI scope keys this module sets
_LOG_FIELDS = "resnet_serving.log_fields"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_ERROR_RESPONSES = {
    status: ResponseSpec(schemas.ErrorBody, description=text)
    for status, text in {
        400: "undecodable or corrupt image, or a malformed multipart body",
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


def _pipeline(service: Service, name: str):
    if name not in service.pipelines:
        raise errors.UnknownModel(
            f"unknown model {name!r}; available: {', '.join(service.pipelines)}", available=list(service.pipelines)
        )
    return service.pipelines[name]


async def _classify(
    request: Request, name: str | None, k: int | None, depth: int | None = None, budget_ms: float | None = None
) -> schemas.Classification | schemas.BatchClassification:
    started = asyncio.get_running_loop().time()
    service, ladder = _service(request), request.app.state.ladder
    label, status = "unknown", 500
    try:
        name = ladders.resolve(ladder, service.models, name, depth) or ladder.default_model
        label = name if name in service.pipelines or name == AUTO else "unknown"
        pipeline = _pipeline(service, ladder.rungs[0] if name == AUTO else name)
        card = pipeline.model.card
        k = min(DEFAULT_TOP_K, card.num_classes) if k is None else k
        if not 1 <= k <= card.num_classes:
            raise errors.InvalidParameter(
                f"top_k must be between 1 and {card.num_classes} for {name}, got {k}", parameter="top_k"
            )
        if not service.warm:
            raise errors.NotReady()
        kind = uploads.body_kind(request.content_type[0])
        config = service.config
        # Refused from the headers, before a byte of the body is read (service/admission.py).
        with trace.span("admission", model=name):  # trace
            ticket = admission.admit(pipeline, service.read_budget, request.content_length, config.max_body_bytes)
        deadline = started + config.request_timeout_s
        budget = None if budget_ms is None else started + budget_ms / 1000.0
        try:
            async with asyncio.timeout_at(deadline):
                body = ticket.read(request.stream())
                if kind == "raw":
                    payloads = [await uploads.read_raw(body, config.max_body_bytes)]
                else:
                    boundary = request.content_type[1].get("boundary")
                    payloads = await uploads.read_multipart(body, boundary, config.max_body_bytes, config.max_images)
                if name == AUTO:  # the budget bends the depth (cascade.py); the timeout still bounds it
                    answers = await request.app.state.cascade.classify(payloads, deadline, budget)
                else:  # a named model: the budget is this request's deadline
                    async with asyncio.timeout_at(min(deadline, budget or deadline)):
                        rows = await pipeline.classify(payloads, min(deadline, budget or deadline))
        except TimeoutError:
            within = f"budget_ms = {budget_ms}" if budget and budget < deadline else ""
            raise errors.DeadlineExceeded(
                f"no answer within {within or f'request_timeout_s = {config.request_timeout_s} s'}"
            ) from None
        finally:
            ticket.release()
        request.scope[_LOG_FIELDS] = {"model": name, "images": len(payloads)}
        status = 200
    except errors.ServiceError as error:
        status = error.status
        raise
    finally:
        service.metrics.requests.inc(label, str(status))
        service.metrics.request_seconds.observe(asyncio.get_running_loop().time() - started, label)
    if name == AUTO:
        return _auto_answer(request.app.state.cascade, card, answers, k)
    if len(payloads) == 1:
        return schemas.Classification(name, schemas.top_k(card, rows[0], k))
    return schemas.BatchClassification(name, [schemas.ImageResult(schemas.top_k(card, row, k)) for row in rows])


AUTO = "auto"  # the cascade's model name: model=auto, /models/auto/classify


def _auto_answer(cascade: Cascade, card, answers, k: int):
    """model=auto's body: each image says which rung answered it and how it got there."""

    def step(answer) -> schemas.CascadeStep:
        return schemas.CascadeStep(
            answer.path, cascade.policy.signal, round(answer.confidence, 6), answer.threshold,
            answer.skipped, cascade.policy.calibrated,
        )  # fmt: skip

    if len(answers) == 1:
        return schemas.Classification(answers[0].path[-1], schemas.top_k(card, answers[0].row, k), step(answers[0]))
    results = [schemas.ImageResult(schemas.top_k(card, a.row, k), a.path[-1], step(a)) for a in answers]
    return schemas.BatchClassification(AUTO, results)


_DEPTH = Parameter(default=None, ge=1, description="pick the ladder's model of this depth (GET /models lists them)")
_BUDGET = Parameter(
    default=None, gt=0, description="latency budget, ms: a named model's deadline; model=auto escalates only within it"
)
_TOP_K = Parameter(
    default=None, ge=1, description="classes to return, 1 to the model's class count (default 5, or all if fewer)"
)
_CLASSIFY = dict(status_code=200, responses=_ERROR_RESPONSES, operation_class=ClassifyOperation, description=(
    "Body: one image as the raw body (Content-Type image/jpeg, image/png, ...), or multipart/form-data "
    "with one or more files. One image answers {model, predictions}; several answer {model, results}."
))  # fmt: skip


@post("/classify", **_CLASSIFY)
async def classify(
    request: Request,
    model: str | None = Parameter(default=None, description="served model name, or auto (the depth cascade)"),
    top_k: int | None = _TOP_K,
    depth: int | None = _DEPTH,
    budget_ms: float | None = _BUDGET,
) -> schemas.Classification | schemas.BatchClassification:
    """Classify the posted image(s) with `model` (the configured default if absent)."""
    return await _classify(request, model, top_k, depth, budget_ms)


@post("/models/{name:str}/classify", **_CLASSIFY)
async def classify_with(
    request: Request, name: str, top_k: int | None = _TOP_K, depth: int | None = _DEPTH,
    budget_ms: float | None = _BUDGET,
) -> schemas.Classification | schemas.BatchClassification:
    """Classify the posted image(s) with the model in the path."""
    return await _classify(request, name, top_k, depth, budget_ms)


@get("/models")
async def list_models(request: Request) -> schemas.ModelList:
    """Every served model, without class lists."""
    service, ladder, cascade = _service(request), request.app.state.ladder, request.app.state.cascade
    default = ladder.default_model
    infos = [schemas.model_info(m.card, m.providers, name == default) for name, m in service.models.items()]
    policy = cascade.policy
    rungs = [
        schemas.Rung(name, depth, service.models[name].card.precision,
                     policy.thresholds[i] if i < len(policy.thresholds) else None, policy.gflops.get(name),
                     round(service.pipelines[name].batch_seconds * 1000, 3))
        for i, (name, depth) in enumerate(zip(ladder.rungs, ladder.depths))
    ]  # fmt: skip
    auto = schemas.Auto(policy.signal, policy.calibrated, policy.source)
    return schemas.ModelList(default, infos, rungs, ladder.rule, auto)


@get("/models/{name:str}", responses={404: _ERROR_RESPONSES[404]})
async def describe_model(request: Request, name: str) -> schemas.ModelDetail:
    """One model, with its classes in logit order."""
    service = _service(request)
    model = _pipeline(service, name).model
    return schemas.model_info(model.card, model.providers, name == request.app.state.ladder.default_model, detail=True)


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
    """A dead batcher fails both probes (the pod must be replaced) and says why (issue 12)."""
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
    params = request.path_params.get("name") or request.query_params.get("model")
    name = params or request.app.state.ladder.default_model
    service.metrics.requests.inc(name if name in service.pipelines or name == AUTO else "unknown", str(status))


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
    request_id = request.scope.get(_REQUEST_ID) or uuid.uuid4().hex
    headers = {**error.headers, "X-Request-ID": request_id, **trace.response_headers(request.scope)}  # access/trace
    if isinstance(exc, MethodNotAllowedException) and exc.headers:  # RFC 9110 15.5.6: 405 says Allow
        headers["Allow"] = exc.headers.get("allow") or exc.headers.get("Allow", "")
    if oip.owns(request.url.path):  # the Open Inference Protocol's routes answer its own shape
        return oip.error_response(error, headers)
    return Response(errors.error_body(error, request_id), status_code=error.status, headers=headers)


class RequestContext:
    """ASGI middleware: a request id per request (the client's X-Request-ID if sane), echoed in the
    response headers, and one structured access-log line per request."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        supplied = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = supplied if _VALID_REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex
        scope[_REQUEST_ID] = request_id
        status = 500

        async def send_with_id(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except errors.ServiceError as error:  # raised by inner middleware (server.BodyDeadline): answered
            status = error.status  # by Litestar's handler outside this one, so logged with its status here
            raise
        finally:
            fields = {
                "request_id": request_id,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                **scope.get(_LOG_FIELDS, {}),
            }
            access_log.info("%s %s %d", scope["method"], scope["path"], status, extra=fields)


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
    gate = access.Gate.from_config(config)  # keys and limits (service/access.py); raises KeysFileError

    @asynccontextmanager
    async def lifespan(app: Litestar):
        service = Service(config, models)
        app.state.service, app.state.ladder = service, ladder
        app.state.cascade = Cascade(ladder, policy, service.pipelines, service.metrics)
        await service.start()
        gate.start(service.metrics)  # access: watches the keys file
        try:
            yield
        finally:
            await gate.close()  # access
            await service.close()
            trace.flush()  # trace: the process exits by SIGTERM, which skips atexit
            log.info("stopped: queues drained, pools closed")

    return Litestar(
        route_handlers=[classify, classify_with, list_models, describe_model, live, ready, prometheus, oip.router],
        lifespan=[lifespan],
        exception_handlers={Exception: error_response},
        # trace.TraceContext outermost, so the access line of RequestContext carries the trace id;
        # access.Guard refuses from the headers, before a route reads the body (access/trace).
        middleware=[trace.TraceContext, RequestContext, DefineMiddleware(
            server.BodyDeadline, timeout_s=config.body_timeout_s, max_body_bytes=config.max_body_bytes
        ), *([DefineMiddleware(access.Guard, gate=gate)] if gate.active else [])],
        # The classify routes enforce max_body_bytes themselves (uploads.py), with our error shape;
        # no other route reads a body.
        request_max_body_size=None,
        openapi_config=OpenAPIConfig(title="resnet-serve", version="0.1.0"),
        logging_config=None,  # logs.configure() owns logging: JSON lines
    )
