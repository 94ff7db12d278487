"""The HTTP face: a Litestar app over the serving pipeline (service/pipeline.py).

    POST /classify?model=resnet18&top_k=5      POST /models/{name}/classify?top_k=5
    GET  /models   GET /models/{name}   GET /health/live   GET /health/ready   GET /metrics
    GET  /schema   (OpenAPI, Litestar's default)

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

from service import admission, errors, metrics, schemas, server, uploads
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
        404: "unknown model (the body lists the available ones)",
        408: "the body did not arrive within body_timeout_s (the connection is closed)",
        413: "body over max_body_bytes, image over max_pixels, or more than max_images files",
        415: "unsupported media type",
        422: "bad query parameter (top_k outside 1..num_classes, wrong type)",
        431: "more than 100 headers, or over 16 KiB of them",
        500: "the model's batching loop died (the service needs a restart), or inference failed",
        503: "the model's queue is full, the read budget is taken, or the service is warming up (see Retry-After)",
        504: "the request waited past request_timeout_s",
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
    request: Request, name: str | None, k: int | None
) -> schemas.Classification | schemas.BatchClassification:
    started = asyncio.get_running_loop().time()
    service = _service(request)
    name = service.config.default_model if name is None else name
    label, status = (name if name in service.pipelines else "unknown"), 500
    try:
        pipeline = _pipeline(service, name)
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
        ticket = admission.admit(pipeline, service.read_budget, request.content_length, config.max_body_bytes)
        deadline = started + config.request_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                body = ticket.read(request.stream())
                if kind == "raw":
                    payloads = [await uploads.read_raw(body, config.max_body_bytes)]
                else:
                    boundary = request.content_type[1].get("boundary")
                    payloads = await uploads.read_multipart(body, boundary, config.max_body_bytes, config.max_images)
                rows = await pipeline.classify(payloads, deadline)
        except TimeoutError:
            raise errors.DeadlineExceeded(
                f"no answer within request_timeout_s = {config.request_timeout_s} s"
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
    if len(payloads) == 1:
        return schemas.Classification(name, schemas.top_k(card, rows[0], k))
    return schemas.BatchClassification(name, [schemas.ImageResult(schemas.top_k(card, row, k)) for row in rows])


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
    model: str | None = Parameter(default=None, description="served model name"),
    top_k: int | None = _TOP_K,
) -> schemas.Classification | schemas.BatchClassification:
    """Classify the posted image(s) with `model` (the configured default if absent)."""
    return await _classify(request, model, top_k)


@post("/models/{name:str}/classify", **_CLASSIFY)
async def classify_with(
    request: Request, name: str, top_k: int | None = _TOP_K
) -> schemas.Classification | schemas.BatchClassification:
    """Classify the posted image(s) with the model in the path."""
    return await _classify(request, name, top_k)


@get("/models")
async def list_models(request: Request) -> schemas.ModelList:
    """Every served model, without class lists."""
    service = _service(request)
    default = service.config.default_model
    infos = [schemas.model_info(m.card, m.providers, name == default) for name, m in service.models.items()]
    return schemas.ModelList(default, infos)


@get("/models/{name:str}", responses={404: _ERROR_RESPONSES[404]})
async def describe_model(request: Request, name: str) -> schemas.ModelDetail:
    """One model, with its classes in logit order."""
    service = _service(request)
    model = _pipeline(service, name).model
    return schemas.model_info(model.card, model.providers, name == service.config.default_model, detail=True)


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
    name = request.path_params.get("name") or request.query_params.get("model") or service.config.default_model
    service.metrics.requests.inc(name if name in service.pipelines else "unknown", str(status))


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
    headers = {**error.headers, "X-Request-ID": request_id}
    if isinstance(exc, MethodNotAllowedException) and exc.headers:  # RFC 9110 15.5.6: 405 says Allow
        headers["Allow"] = exc.headers.get("allow") or exc.headers.get("Allow", "")
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


def create_app(config: ServeConfig, models: dict[str, LoadedModel]) -> Litestar:
    """The Litestar app serving `models` (from runtime.load_models) with `config`."""

    @asynccontextmanager
    async def lifespan(app: Litestar):
        service = Service(config, models)
        app.state.service = service
        await service.start()
        try:
            yield
        finally:
            await service.close()
            log.info("stopped: queues drained, pools closed")

    return Litestar(
        route_handlers=[classify, classify_with, list_models, describe_model, live, ready, prometheus],
        lifespan=[lifespan],
        exception_handlers={Exception: error_response},
        middleware=[RequestContext, DefineMiddleware(server.BodyDeadline, timeout_s=config.body_timeout_s)],
        # The classify routes enforce max_body_bytes themselves (uploads.py), with our error shape;
        # no other route reads a body.
        request_max_body_size=None,
        openapi_config=OpenAPIConfig(title="resnet-serve", version="0.1.0"),
        logging_config=None,  # logs.configure() owns logging: JSON lines
    )
