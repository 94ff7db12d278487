"""The service's one exception tree; app.py maps it, in one handler, to one JSON error shape.

    {"error": {"status": 404, "code": "unknown_model", "message": "...", "request_id": "...", ...details}}

Plain Python (no web framework), so the batcher and the preprocessing raise these directly.
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error a client caused or must react to; `status` is its HTTP status, `code` a stable name."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, **details) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.details = details  # extra JSON members, e.g. the available models


class BadImage(ServiceError):
    """The bytes are not a decodable image (corrupt, truncated, empty, or no image part at all)."""

    status, code = 400, "bad_image"


class BadJson(ServiceError):
    """A JSON body that does not parse, has the wrong shape, or holds a string that is not base64."""

    status, code = 400, "bad_json"


class UnknownModel(ServiceError):
    """The request names a model this process does not serve."""

    status, code = 404, "unknown_model"


class NotFound(ServiceError):
    """No route at this path."""

    status, code = 404, "not_found"


class MethodNotAllowed(ServiceError):
    status, code = 405, "method_not_allowed"


class BodyTooLarge(ServiceError):
    """The request body is over max_body_bytes."""

    status, code = 413, "body_too_large"


class TooManyPixels(ServiceError):
    """An image's header announces more than max_pixels: refused before decoding (decompression bombs)."""

    status, code = 413, "too_many_pixels"


class TooManyImages(ServiceError):
    """A multipart upload carries more than max_images files."""

    status, code = 413, "too_many_images"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidParameter(ServiceError):
    """A query or path parameter is out of range or of the wrong type."""

    status, code = 422, "invalid_parameter"


class Unauthorized(ServiceError):
    """The route needs an API key and the request sent none, or one that is not listed (RFC 6750)."""

    status, code = 401, "unauthorized"

    def __init__(self, message: str, challenge: str = "Bearer", **details) -> None:
        super().__init__(message, headers={"WWW-Authenticate": challenge}, **details)


class RateLimited(ServiceError):
    """The key (or, without keys, the client address) is over its requests per second (RFC 6585)."""

    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after_s: int, **details) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)}, retry_after_s=retry_after_s, **details)


class Overloaded(ServiceError):
    """A model's bounded queue is full; the client should retry after Retry-After seconds."""

    status, code = 503, "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1, **details) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after_s)))}, **details)


class NotReady(ServiceError):
    """The models are still loading or warming up."""

    status, code = 503, "not_ready"

    def __init__(self, message: str = "the models are still warming up", **details) -> None:
        super().__init__(message, headers={"Retry-After": "1"}, **details)


class Draining(ServiceError):
    """The process got SIGTERM: a request that arrives during the drain is refused, and its connection
    closed, so that the client retries on another replica (service/api/server.py)."""

    status, code = 503, "draining"

    def __init__(self, message: str, **details) -> None:
        super().__init__(message, headers={"Retry-After": "1", "Connection": "close"}, **details)


class DeadlineExceeded(ServiceError):
    """A request waited past request_timeout_s (queued behind others, or a slow inference)."""

    status, code = 504, "deadline_exceeded"


class BodyTimeout(ServiceError):
    """The client did not send its whole body within body_timeout_s; the connection is closed after."""

    status, code = 408, "body_timeout"

    def __init__(self, message: str, **details) -> None:
        super().__init__(message, headers={"Connection": "close"}, **details)


class HeadersTooLarge(ServiceError):
    """The request's headers are over the size or count the service reads (RFC 6585's 431)."""

    status, code = 431, "headers_too_large"

    def __init__(self, message: str, **details) -> None:
        super().__init__(message, headers={"Connection": "close"}, **details)


class BatcherFailed(ServiceError):
    """A model's batching loop died: every waiting request and every later one gets this at once."""

    status, code = 500, "batcher_failed"


class InferenceFailed(ServiceError):
    """ONNX Runtime raised while running a batch; every request in that batch gets this."""

    status, code = 500, "inference_failed"


def error_body(error: ServiceError, request_id: str | None) -> dict:
    """The JSON body of an error response: the one shape every error takes."""
    return {
        "error": {
            "status": error.status,
            "code": error.code,
            "message": error.message,
            "request_id": request_id,
            **error.details,
        }
    }
