"""Admission before the body: refuse on what the headers say, and bound the bytes being read.

Refusing only after a body was read and parsed would let a flood of large uploads cost memory and
time before its 503s (docs/robustness.md). So a classify request is refused with 503 and
Retry-After before a byte of its body is read when

- its model already has queue_size images in flight (ModelPipeline.check_capacity), or
- the bodies being read and held by all requests together would pass read_budget_bytes. A body with
  a Content-Length takes its announced size from the budget up front; one without (chunked) takes
  it chunk by chunk as it arrives, and is refused at the chunk that would pass the budget.

The budget is the bound on request bodies in memory: a body's bytes are held until its answer is
sent, so it is given back then, not when reading ends. It holds no queue slot: a slow client costs
bytes of budget, never a model's capacity (slow clients are cut off by service/api/server.py).
"""

from __future__ import annotations

from typing import AsyncIterator

from service.errors import BodyTooLarge, Overloaded


class ByteBudget:
    """A count of bytes that requests take and give back; single-threaded (the event loop)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def take(self, count: int) -> None:
        """Take `count` bytes, or raise Overloaded (503) if they are not free."""
        if self.used + count > self.capacity:
            raise Overloaded(
                f"the service is reading {self.used} bytes of request bodies, "
                f"{count} more would pass read_budget_bytes = {self.capacity}",
                retry_after_s=1,
            )
        self.used += count

    def give(self, count: int) -> None:
        self.used -= count


class Ticket:
    """One request's admission: its share of the budget, given back by `release()`."""

    def __init__(self, budget: ByteBudget, announced: int | None) -> None:
        self.budget = budget
        self.announced = announced
        self.taken = 0
        if announced:
            budget.take(announced)
            self.taken = announced

    async def read(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The body's chunks; a body without a Content-Length takes budget as each chunk arrives."""
        async for chunk in stream:
            if self.announced is None:
                self.budget.take(len(chunk))
                self.taken += len(chunk)
            yield chunk

    def release(self) -> None:
        self.budget.give(self.taken)
        self.taken = 0


def admit(pipeline, budget: ByteBudget, content_length: int | None, max_body_bytes: int) -> Ticket:
    """Refuse from the headers (413 over max_body_bytes, 500 if the model's batcher died, 503 at
    capacity or over the read budget), else take the announced bytes from the budget."""
    if (content_length or 0) > max_body_bytes:
        raise BodyTooLarge(
            f"the request body is over the limit of {max_body_bytes} bytes", max_body_bytes=max_body_bytes
        )
    pipeline.batcher.check_alive()
    pipeline.check_capacity(1)  # a multipart upload's real count is checked again once it is parsed
    return Ticket(budget, content_length)
