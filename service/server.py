"""The HTTP server around the app: uvicorn, plus the client timeouts it does not have.

Uvicorn (0.30 to 0.54, h11 protocol; httptools is not installed) closes a keep-alive connection
that stays idle `timeout_keep_alive` seconds after a response, bounds a request head to
`h11_max_incomplete_event_size` bytes (16 KiB: 400 beyond), and can refuse requests past
`limit_concurrency` connections. It has no timeout for a request's head or body: measured on the
service before issue 12, 100 connections that never sent a byte and 200 that sent a header line
every 5 s were all still open after 60 s, and a body trickled at a byte a second got its 504 at
request_timeout_s but kept its connection open. Two additions close that, so that `make serve`
itself is protected (a proxy in front may add its own timeouts, not replace these):

- `HeadDeadline`, the h11 protocol with one timer: a connection must deliver a complete request
  head within header_timeout_s of connecting or of its previous response, or it is closed. Data
  arriving meanwhile does not restart the timer (uvicorn's keep-alive timer does restart, which is
  what lets a slowloris client hold a connection forever).
- `BodyDeadline`, an ASGI middleware: the whole body must arrive within body_timeout_s of the head
  (408 beyond: a total, not an idle timeout, so a byte-a-second trickle cannot renew it), and a
  response sent before the body was read to its end closes the connection, so a client refused
  early (413, 503, 408) cannot keep feeding bytes that the server would read and throw away.

A slow client therefore holds a connection and a few kilobytes of buffers for at most
header_timeout_s + body_timeout_s, never a decode thread or a queue slot (service/admission.py).
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.config import ServeConfig
from service.errors import BodyTimeout, HeadersTooLarge

log = logging.getLogger("service.server")

# h11 refuses a head over 16 KiB only while it is incomplete: one that arrives whole in a single read
# (up to 256 KiB) was accepted, measured with a 70 KB header. These bound what the app will look at:
# uvicorn's own 16 KiB, and Apache's LimitRequestFields of 100 headers.
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100


class HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head is not complete in time."""

    head_timeout_s = 10.0  # set per server by uvicorn_config()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        if self._between_requests() and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._expire)

    def _disarm(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expire(self) -> None:
        # A request that started meanwhile is the app's (BodyDeadline, request_timeout_s) to bound.
        self._head_timer = None
        if self._between_requests() and not self.transport.is_closing():
            log.info("closed a connection that sent no complete request head in %.1f s", self.head_timeout_s)
            self.transport.close()


class BodyDeadline:
    """ASGI middleware: 431 for a head over MAX_HEAD_BYTES or MAX_HEADERS; 408 if the body is not
    all in within `timeout_s` of the head; a response that starts before the body was read to its
    end carries `Connection: close`."""

    def __init__(self, app, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if size > MAX_HEAD_BYTES or len(scope["headers"]) > MAX_HEADERS:
            raise HeadersTooLarge(
                f"the request has {len(scope['headers'])} headers of {size} bytes; "
                f"the service reads at most {MAX_HEADERS} headers and {MAX_HEAD_BYTES} bytes",
                max_headers=MAX_HEADERS,
                max_head_bytes=MAX_HEAD_BYTES,
            )
        headers = dict(scope["headers"])
        announced = headers.get(b"content-length", b"0") not in (b"", b"0") or b"transfer-encoding" in headers
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        body_done = not announced

        async def receive_in_time():
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                text = f"the request body did not arrive within body_timeout_s = {self.timeout_s} s"
                raise BodyTimeout(text) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def send_closing(message) -> None:
            if message["type"] == "http.response.start" and not body_done:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive_in_time, send_closing)


def uvicorn_config(app, config: ServeConfig) -> uvicorn.Config:
    """Uvicorn's settings for `app`: the drain on SIGTERM and every client timeout above."""
    protocol = type("HeadDeadline", (HeadDeadline,), {"head_timeout_s": config.header_timeout_s})
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        lifespan="on",
        http=protocol,
        timeout_keep_alive=config.keep_alive_timeout_s,
        log_config=None,  # logs.configure() already routes uvicorn's loggers to JSON lines
        access_log=False,  # the app's RequestContext logs each request, with its request id
        timeout_graceful_shutdown=config.drain_timeout_s,
    )
