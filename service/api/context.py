"""Per-request context at the ASGI level: a request id (the client's X-Request-ID if sane) echoed in the
response, and one structured access-log line per request with what the handler added to it."""

from __future__ import annotations

import logging
import re
import time
import uuid

from service import errors

access_log = logging.getLogger("service.access")

REQUEST_ID = "resnet_serving.request_id"  # ASGI scope keys: the request's id, and the handler's log fields
LOG_FIELDS = "resnet_serving.log_fields"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


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
        scope[REQUEST_ID] = request_id
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
                **scope.get(LOG_FIELDS, {}),
            }
            access_log.info("%s %s %d", scope["method"], scope["path"], status, extra=fields)
