"""The HTTP server around the app: uvicorn, plus the client timeouts it does not have.

Uvicorn (0.30 to 0.55, the bound in pyproject.toml; h11 protocol; httptools is not installed) closes a keep-alive connection
that stays idle `timeout_keep_alive` seconds after a response, bounds a request head to
`h11_max_incomplete_event_size` bytes (16 KiB: 400 beyond), and can refuse requests past
`limit_concurrency` connections. It has no timeout for a request's head or body, so idle and
trickling connections stay open indefinitely (measured in docs/robustness.md). Two additions close
that, so that `make serve` itself is protected (a proxy in front may add its own timeouts):

- `HeadDeadline`, the h11 protocol with one timer: a connection must deliver a complete request
  head within header_timeout_s of connecting or of its previous response, or it is closed. Data
  arriving meanwhile does not restart the timer (uvicorn's keep-alive timer does restart, which is
  what lets a slowloris client hold a connection forever).
- `BodyDeadline`, an ASGI middleware: the whole body must arrive within body_timeout_s of the head
  (408 beyond: a total, not an idle timeout, so a byte-a-second trickle cannot renew it), and a
  response sent before the body was read to its end closes the connection, so a client refused
  early (413, 503, 408) cannot keep feeding bytes that the server would read and throw away.

A slow client therefore holds a connection and a few kilobytes of buffers for at most
header_timeout_s + body_timeout_s, never a decode thread or a queue slot (service/engine/admission.py).

On SIGTERM uvicorn closes the listening socket, lets running requests finish (closing their
connections after, without saying so in the response) and closes every other connection at once.
Requests already on their way were lost: the client saw its connection close or reset without an
answer and could not tell whether its POST ran (docs/robustness.md, Faults). Here, instead:

- a running request's response says `Connection: close`, so a kept-alive client does not send its
  next request into the closing connection;
- a connection between requests keeps drain_grace_s (at most header_timeout_s; a head already
  begun keeps its head deadline) to deliver a request, which is answered 503 `draining` with
  Retry-After and `Connection: close`, then closed. Go's http.Server.Shutdown closes idle
  connections at once but gives one that has sent nothing yet 5 s. Kubernetes has taken the pod
  out of its endpoints by then, so what still arrives was already on its way;
- `DrainingServer` accepts the connections the kernel has queued on the listening socket before
  closing it (closing resets them), and they are answered like the others.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.config import ServeConfig
from service.errors import BodyTimeout, Draining, HeadersTooLarge

log = logging.getLogger("service.api.server")

# h11 refuses a head over 16 KiB only while it is incomplete: one that arrives whole in a single read
# (up to 256 KiB) was accepted, measured with a 70 KB header. These bound what the app will look at:
# uvicorn's own 16 KiB, and Apache's LimitRequestFields of 100 headers.
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
# ASGI scope key: SIGTERM came before this request's response. A request that starts so marked is
# refused (503 draining); one already running is answered, with `Connection: close`.
DRAINING = "resnet_serving.draining"


class HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head is not complete in time, and
    answering what arrives during the SIGTERM drain (module docstring)."""

    head_timeout_s = 10.0  # set per server by uvicorn_config()
    drain_grace_s = 2.0
    draining = False  # set on SIGTERM by DrainingServer (on the class uvicorn_config made per server)

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self._shut_down = False
        self._arm()
        if self.draining:
            # Accepted before SIGTERM, made after: uvicorn's shutdown never saw it, and it served a
            # kept-alive client until the drain timed out (measured: 2,616 requests in 30 s).
            self.shutdown()

    def shutdown(self) -> None:
        """SIGTERM: a running request is answered with `Connection: close`, then the connection is
        closed; one that arrives within the grace is answered 503 draining, then closed."""
        if self._shut_down:  # made after SIGTERM (connection_made), then shut down again by uvicorn
            return
        self._shut_down = True
        if not self._between_requests():
            # uvicorn closes after the response but does not say so in it (RFC 9112 9.6: SHOULD): a
            # kept-alive client sent its next request into the closing connection (measured: ReadError).
            self.cycle.scope[DRAINING] = True
        if not self._between_requests() or self.transport.is_closing() or self.drain_grace_s <= 0:
            super().shutdown()
            return
        self.app = _Draining(self.app)  # the next cycle runs this (H11Protocol.handle_events)
        if not self._head_begun():  # a head already begun keeps its head deadline
            grace = min(self.drain_grace_s, self.head_timeout_s)
            self._grace_timer = self.loop.call_later(grace, self._close_idle)

    def _head_begun(self) -> bool:
        return bool(self.conn.trailing_data[0])  # bytes h11 holds that are not yet a whole head

    def _close_idle(self) -> None:
        self._grace_timer = None
        if self._between_requests() and not self._head_begun() and not self.transport.is_closing():
            self.conn.send(h11.ConnectionClosed())  # as uvicorn's shutdown does, a grace later
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._grace_timer is not None:
            self._grace_timer.cancel()
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


class _Draining:
    """The app as seen by a request that arrives on a connection after SIGTERM: marked draining."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        scope[DRAINING] = True
        await self.app(scope, receive, send)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which on SIGTERM first accepts what the kernel has queued on the listening
    socket, then closes it, and logs where each connection stood as the drain began.

    Closing a listening socket resets every connection in its accept queue, requests already sent
    included (tried: three httpx uploads queued on a listener that then closed all got ReadError,
    connection reset; the faults scenario found 2 and 5 queued at SIGTERM in two runs before this).
    Accepting them first makes them connections like any other: 503 draining within the grace. Connections
    still in the handshake when the socket closes are reset all the same; the deployment's preStop
    sleep (deploy/k8s) is what keeps new connections from arriving by then."""

    async def shutdown(self, sockets=None) -> None:
        connections = list(self.server_state.connections)
        running = sum(1 for c in connections if getattr(c, "cycle", None) and not c.cycle.response_complete)
        self.config.http_protocol_class.draining = True
        queued = []
        for server in self.servers:
            for listener in server.sockets:
                queued += _accept_queued(listener)
            server.close()  # at once after: nothing is queued in between (one step of the event loop)
        loop = asyncio.get_running_loop()
        protocol = self.config.http_protocol_class
        for sock in queued:
            try:
                await loop.connect_accepted_socket(
                    lambda: protocol(config=self.config, server_state=self.server_state, app_state=self.lifespan.state),
                    sock,
                )  # as uvicorn's Server.startup builds each connection's protocol
            except OSError:
                sock.close()  # reset by the client meanwhile
        fields = {"running": running, "between_requests": len(connections) - running, "accepted_at_close": len(queued)}
        log.info("draining: %d requests running, %d connections between requests, %d accepted from the listen "
                 "queue as it closed (503 draining within the grace)", *fields.values(), extra=fields)
        await super().shutdown(sockets)


def _accept_queued(listener) -> list[socket.socket]:
    """Every connection the kernel holds in `listener`'s accept queue, accepted now, non-blocking."""
    accepted = []
    with listener.dup() as sock:  # a TransportSocket has no accept(); its dup shares the queue
        sock.setblocking(False)
        while len(accepted) < 65536:
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                break
            conn.setblocking(False)
            accepted.append(conn)
    return accepted


class BodyDeadline:
    """ASGI middleware: 431 for a head over MAX_HEAD_BYTES or MAX_HEADERS; 408 if the body is not
    all in within `timeout_s` of the head; a response that starts before the body was read to its
    end carries `Connection: close`; a request that arrived after SIGTERM gets 503 `draining`."""

    def __init__(self, app, timeout_s: float, max_body_bytes: int) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes

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

        if scope.get(DRAINING):
            # Read what was sent and drop it, so that the close after the 503 sends no RST over
            # unread bytes (which can destroy the answer in the client's buffer); bounded in time
            # by the deadline above and in bytes by max_body_bytes.
            length = headers.get(b"content-length", b"")
            if not (length.isdigit() and int(length) > self.max_body_bytes):
                read = 0
                while not body_done and read <= self.max_body_bytes:
                    read += len((await receive_in_time()).get("body", b""))
            raise Draining("the service is shutting down (SIGTERM); retry, another replica will answer")

        async def send_closing(message) -> None:
            if message["type"] == "http.response.start" and (not body_done or scope.get(DRAINING)):
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive_in_time, send_closing)


def uvicorn_config(app, config: ServeConfig) -> uvicorn.Config:
    """Uvicorn's settings for `app`: the drain on SIGTERM and every client timeout above."""
    timeouts = {"head_timeout_s": config.header_timeout_s, "drain_grace_s": config.drain_grace_s}
    protocol = type("HeadDeadline", (HeadDeadline,), timeouts)  # a class per server: DrainingServer marks it
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
