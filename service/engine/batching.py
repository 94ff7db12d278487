"""Dynamic batching on plain asyncio: many requests' images, one inference.

Modelled on Ray Serve's batching queue (a queue, an event, one future per item), with
`loop.time()` (monotonic) for every delay, explicit start/close, a bounded queue and per-item
deadlines. Its only imports from this project are the exception tree and service/trace.py (spans,
no-ops without OpenTelemetry), both plain Python.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

from service import trace
from service.errors import BatcherFailed, DeadlineExceeded, Overloaded

log = logging.getLogger("service.engine.batching")

In = TypeVar("In")
Out = TypeVar("Out")


class _Item:
    __slots__ = ("payload", "future", "enqueued_at", "deadline", "link")

    def __init__(self, payload, future: asyncio.Future, enqueued_at: float, deadline: float, link=None) -> None:
        self.payload = payload
        self.future = future
        self.enqueued_at = enqueued_at
        self.deadline = deadline
        self.link = link  # the submitting request's span, which its batch's span links to (trace.py)


class Batcher(Generic[In, Out]):
    """Gathers items submitted by many coroutines into calls of `run_batch(items) -> outputs`.

    Contract: a batch starts once `max_batch_size` items wait, or once `max_delay_s` has passed since
    the oldest waiting item arrived, whichever is first, or at once when the optional `incoming()`
    hint says no other item is on its way; a batch is never empty and at most `instances` batches
    run at a time (items arriving while all run form the next one; Triton's instance count). Items from one `submit` keep their order and
    may span batches. `run_batch` must return one output per input; if it raises, or returns the wrong
    count, exactly the callers in that batch get the error. At most `queue_size` items wait: a
    `submit` that would exceed it raises `Overloaded` at once. An item whose deadline has passed
    before its batch starts fails with `DeadlineExceeded`; one whose caller gave up is skipped.
    If the loop itself dies (a bug, not a failed batch), every waiting item and every later `submit`
    fails at once with `BatcherFailed`, `failure` says why, and the service reports itself unready.
    """

    def __init__(
        self,
        run_batch: Callable[[list[In]], Awaitable[Sequence[Out]]],
        max_batch_size: int,
        max_delay_s: float,
        queue_size: int,
        on_batch: Callable[[list[float]], None] | None = None,
        name: str = "batcher",
        incoming: Callable[[], int] | None = None,
        instances: int = 1,
    ) -> None:
        if max_batch_size < 1 or queue_size < 1 or max_delay_s < 0 or instances < 1:
            raise ValueError(
                f"need max_batch_size >= 1, queue_size >= 1, max_delay_s >= 0, instances >= 1; "
                f"got {max_batch_size}, {queue_size}, {max_delay_s}, {instances}"
            )
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.queue_size = queue_size
        self.on_batch = on_batch  # called with each item's queue wait (seconds) as a batch starts
        self.name = name
        # Items admitted upstream and not yet submitted (still decoding, say). When none are, no item
        # can join a partial batch within the delay but a new request, so waiting would only add
        # latency: at concurrency 1 it is all the delay would do.
        self.incoming = incoming
        self.instances = instances
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._runs: dict[asyncio.Task, list[_Item]] = {}  # the batches running: their callers wait too
        self.failure: BaseException | None = None  # why the loop died, if it did

    @property
    def pending(self) -> int:
        """Items waiting for a batch (not counting the batch that is running)."""
        return len(self._queue)

    def nudge(self) -> None:
        """Re-check the hint now: an item that `incoming()` counted will not come (its caller failed)."""
        self._wake.set()

    def _more_coming(self) -> bool:
        return self.incoming is None or self.incoming() > 0

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"{self.name}-loop")
            self._task.add_done_callback(self._supervise)

    def _supervise(self, task: asyncio.Task) -> None:
        """The loop's owner (STYLE.md): a loop that ends other than by close() fails its waiters now,
        rather than at their deadlines, and marks the batcher dead."""
        if task.cancelled():
            error: BaseException = asyncio.CancelledError("the batching loop was cancelled")
        elif task.exception() is not None:
            error = task.exception()
        elif not self._closing:
            error = RuntimeError("the batching loop returned")
        else:
            return
        self.failure = error
        running = [item for batch in self._runs.values() for item in batch]
        waiting = [item for item in (*running, *self._queue) if not item.future.done()]
        log.error(
            "%s: the batching loop died (%r); failing %d waiting requests", self.name, error, len(waiting),
            exc_info=error if isinstance(error, Exception) else None, extra={"model": self.name},
        )  # fmt: skip
        for item in waiting:
            item.future.set_exception(self._failed())
        self._runs, self._queue = {}, deque()

    def _failed(self) -> BatcherFailed:
        return BatcherFailed(f"{self.name}: the batching loop died ({self.failure!r}); the service needs a restart")

    def check_alive(self) -> None:
        """Raise BatcherFailed (500) if the loop has died: a request can be refused before its body."""
        if self.failure is not None:
            raise self._failed()

    async def close(self) -> None:
        """Refuse new items, run the ones already queued, then stop the loop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)  # a dead loop was reported already
            self._task = None

    async def __aenter__(self) -> Batcher[In, Out]:
        """`async with Batcher(...) as batcher:` starts it, and closes it on the way out."""
        self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def submit(self, payloads: Sequence[In], deadline: float | None = None) -> list[Out]:
        """Queue `payloads` and wait for their outputs, in order. `deadline` is a `loop.time()`."""
        self.check_alive()
        if self._closing or self._task is None:
            raise Overloaded(f"{self.name} is not accepting work (shutting down)")
        if len(self._queue) + len(payloads) > self.queue_size:
            # Items whose callers gave up still sit in the deque until a batch skips them: drop them first.
            self._queue = deque(item for item in self._queue if not item.future.done())
        if len(self._queue) + len(payloads) > self.queue_size:
            raise Overloaded(
                f"{self.name} queue is full ({len(self._queue)} of {self.queue_size} images waiting)",
                retry_after_s=1,
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = float("inf") if deadline is None else deadline
        link = trace.current_link()
        items = [_Item(p, loop.create_future(), now, deadline, link) for p in payloads]
        self._queue.extend(items)
        self._wake.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        except BaseException:
            for item in items:  # the caller gave up (timeout, disconnect) or one item failed
                item.future.cancel()
            raise

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._reap()
            while not self._queue or len(self._runs) >= self.instances:
                if self._closing and not self._queue and not self._runs:
                    return
                self._wake.clear()
                await self._wake.wait()  # set by submit, nudge, close and each batch's end
                self._reap()
            # Wait for a full batch, at most max_delay_s after the oldest item arrived: if a batch ran
            # long, that moment has already passed and whatever waits goes at once.
            if self._should_wait():
                try:
                    async with asyncio.timeout_at(self._queue[0].enqueued_at + self.max_delay_s):
                        while self._should_wait():
                            self._wake.clear()
                            await self._wake.wait()
                except TimeoutError:
                    pass
            batch = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
            run = loop.create_task(self._run(batch, loop.time()), name=f"{self.name}-batch")
            self._runs[run] = batch
            run.add_done_callback(lambda _: self._wake.set())

    def _reap(self) -> None:
        """Forget finished batches. `_run` hands a failed batch's error to its callers, so an error
        here is a bug in the batcher's own code (say, `on_batch`): it ends the loop, as it did when
        the loop ran each batch itself, and `_supervise` fails every waiter."""
        for run in [run for run in self._runs if run.done()]:
            del self._runs[run]
            run.result()

    def _should_wait(self) -> bool:
        return len(self._queue) < self.max_batch_size and not self._closing and self._more_coming()

    async def _run(self, batch: list[_Item], started: float) -> None:
        live = []
        for item in batch:
            if item.future.done():  # cancelled by a caller that gave up
                continue
            if started > item.deadline:
                item.future.set_exception(DeadlineExceeded("the request's deadline passed while it was queued"))
                continue
            live.append(item)
        if not live:
            return
        waits = [started - item.enqueued_at for item in live]
        if self.on_batch is not None:
            self.on_batch(waits)
        try:
            with trace.batch_span(self.name, [item.link for item in live], waits):
                outputs = await self.run_batch([item.payload for item in live])
            if len(outputs) != len(live):
                raise RuntimeError(f"{self.name}: run_batch returned {len(outputs)} outputs for {len(live)} inputs")
        except Exception as error:  # noqa: BLE001 - delivered to exactly this batch's callers
            log.debug("batch of %d failed: %r", len(live), error)
            for item in live:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        for item, output in zip(live, outputs):
            if not item.future.done():
                item.future.set_result(output)
