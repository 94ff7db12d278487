"""Who may call which route: API keys (service/gate/keys.py) and per-caller limits (service/gate/limits.py),
checked from the request's headers before its body is read.

With a keys file, every route needs `Authorization: Bearer KEY` except these, which stay open:
the health probes (/health/*, /v2/health/*: the orchestrator calls them), the OpenAPI document
(/schema), the page at `/`, CORS preflight requests (OPTIONS: browsers never send credentials on
them) and, unless metrics_need_key, /metrics. So /models, the classify routes and the Open
Inference Protocol's model routes are keyed, and a route added later is keyed until listed here.

A refusal is raised as a ServiceError (401 with `WWW-Authenticate: Bearer`, 429 with Retry-After),
so it takes the one error path of the app: the usual body, the request id, and CORS headers.
"""

from __future__ import annotations

import asyncio
import logging

from service import logs
from service.config import ServeConfig
from service.errors import RateLimited, ServiceError, Unauthorized
from service.gate.keys import KeysFile
from service.gate.limits import Limiter

log = logging.getLogger("service.gate.access")

OPEN_PATHS = frozenset({"/", "/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"})
OPEN_PREFIXES = ("/schema", "/ui/")  # the page's own files: it asks for a key itself
ANONYMOUS = "anonymous"  # the key label of requests counted while keys are off
NO_KEY = "-"  # the key label of requests refused for a missing or unknown key


class Gate:
    """The service's keys, limits and the routes they cover; `admit(scope)` checks one request."""

    def __init__(self, keys: KeysFile | None, limiter: Limiter | None, metrics_need_key: bool = False) -> None:
        self.keys, self.limiter, self.metrics_need_key = keys, limiter, metrics_need_key
        self.metrics = None  # set by start(): the Service's, created in the lifespan
        self._watcher: asyncio.Task | None = None

    @classmethod
    def from_config(cls, config: ServeConfig) -> Gate:
        """The gate `config` asks for; raises KeysFileError if the keys file cannot be used."""
        keys = KeysFile(config.api_keys_file) if config.api_keys_file else None
        limiter = Limiter(config.rate_limit_rps, config.rate_limit_burst) if config.rate_limit_rps > 0 else None
        return cls(keys, limiter, config.metrics_need_key)

    @property
    def active(self) -> bool:
        """Whether there is anything to check: without keys and limits the app does not add the Guard."""
        return self.keys is not None or self.limiter is not None

    def guarded(self, method: str, path: str) -> bool:
        """Whether a request needs a key (when keys are on) and counts toward the limits."""
        if method == "OPTIONS" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return False
        return path != "/metrics" or (self.metrics_need_key and self.keys is not None)

    def admit(self, scope) -> None:
        """Pass, or raise Unauthorized (401) or RateLimited (429); the key's name joins the log lines."""
        if self.keys is None:
            name = ANONYMOUS
        else:
            name = self.keys.keys.name_of(self._bearer(scope)) or NO_KEY
            if name == NO_KEY:
                self._count(NO_KEY, "unauthorized")
                raise _closing(scope, Unauthorized("the API key is not valid", 'Bearer error="invalid_token"'))
            logs.bind(key=name)
        if self.limiter is not None:
            client = scope.get("client")
            try:
                self.limiter.take(name if self.keys is not None else (client[0] if client else "unknown"))
            except RateLimited as error:
                self._count(name, "rate_limited")
                raise _closing(scope, error) from None
        self._count(name, "admitted")

    def _bearer(self, scope) -> bytes:
        values = [v for k, v in scope["headers"] if k == b"authorization"]
        scheme, _, token = values[0].strip().partition(b" ") if len(values) == 1 else (b"", b"", b"")
        if scheme.lower() != b"bearer" or not token.strip():
            self._count(NO_KEY, "unauthorized")
            what = "two Authorization headers" if len(values) > 1 else "no Authorization: Bearer KEY header"
            raise _closing(scope, Unauthorized(f"this route needs an API key; the request has {what}"))
        return token.strip()

    def _count(self, name: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.api_requests.inc(name, outcome)

    def start(self, metrics) -> None:
        """Count into `metrics` and, with a keys file, start watching it (the lifespan calls close())."""
        self.metrics = metrics
        if self.keys is not None:
            self._watcher = asyncio.get_running_loop().create_task(self.keys.watch(), name="api-keys-watch")
            self._watcher.add_done_callback(_watcher_ended)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)


def _watcher_ended(task: asyncio.Task) -> None:
    if not task.cancelled():  # watch() only ends by cancellation: anything else is a bug, said loudly
        log.error("API keys: the file watcher stopped; key changes are no longer seen", exc_info=task.exception())


def _closing(scope, error: ServiceError) -> ServiceError:
    """`error`, closing the connection if the request has a body: the refusal comes before it is read,
    so, as server.BodyDeadline does for its early answers, the client is not left sending bytes nobody reads."""
    headers = dict(scope["headers"])
    if headers.get(b"content-length", b"0") not in (b"", b"0") or b"transfer-encoding" in headers:
        error.headers["Connection"] = "close"
    return error


class Guard:
    """ASGI middleware: `gate.admit` for every guarded HTTP request, before the route reads its body."""

    def __init__(self, app, gate: Gate) -> None:
        self.app, self.gate = app, gate

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.gate.guarded(scope["method"], scope["path"]):
            self.gate.admit(scope)
        await self.app(scope, receive, send)
