"""The Batcher alone, on plain asyncio: batch formation, result routing, failures, bounds, deadlines."""

from __future__ import annotations

import asyncio

import pytest

from service.engine.batching import Batcher
from service.errors import DeadlineExceeded, Overloaded


class Recorder:
    """A batch function that doubles its inputs and remembers every batch it saw."""

    def __init__(self, fail_on=None, pause: asyncio.Event | None = None) -> None:
        self.batches: list[list] = []
        self.fail_on = fail_on
        self.pause = pause

    async def __call__(self, items):
        self.batches.append(list(items))
        if self.pause is not None:
            await self.pause.wait()
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"poisoned batch {items}")
        return [x * 2 for x in items]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=20))


def test_a_full_batch_goes_without_waiting_for_the_delay():
    async def main():
        fn = Recorder()
        async with Batcher(fn, max_batch_size=4, max_delay_s=3600, queue_size=100) as batcher:
            results = await asyncio.gather(*(batcher.submit([i]) for i in range(8)))
        return fn.batches, results

    batches, results = run(main())
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7]]  # an hour's delay never came into play
    assert results == [[0], [2], [4], [6], [8], [10], [12], [14]]


def test_a_partial_batch_goes_once_the_delay_has_passed():
    async def main():
        fn = Recorder()
        async with Batcher(fn, max_batch_size=64, max_delay_s=0.02, queue_size=100) as batcher:
            results = await asyncio.gather(*(batcher.submit([i]) for i in range(3)))
        return fn.batches, results

    batches, results = run(main())
    assert batches == [[0, 1, 2]]
    assert results == [[0], [2], [4]]


def test_each_caller_gets_its_own_results_in_order():
    async def main():
        fn = Recorder()
        async with Batcher(fn, max_batch_size=5, max_delay_s=0.01, queue_size=100) as batcher:
            uploads = [list(range(10 * i, 10 * i + n)) for i, n in enumerate((3, 1, 4, 2, 6))]
            results = await asyncio.gather(*(batcher.submit(u) for u in uploads))
        return fn.batches, uploads, results

    batches, uploads, results = run(main())
    assert results == [[2 * x for x in u] for u in uploads]
    # several images from one upload count toward a batch, and an upload may span two batches
    assert [len(b) for b in batches] == [5, 5, 5, 1]
    assert sum(batches, []) == sum(uploads, [])


def test_a_failing_batch_fails_exactly_its_own_callers():
    async def main():
        fn = Recorder(fail_on=13)
        async with Batcher(fn, max_batch_size=2, max_delay_s=3600, queue_size=100) as batcher:
            outcomes = await asyncio.gather(*(batcher.submit([x]) for x in (1, 2, 13, 4, 5, 6)), return_exceptions=True)
        return fn.batches, outcomes

    batches, outcomes = run(main())
    assert batches == [[1, 2], [13, 4], [5, 6]]
    assert outcomes[0:2] == [[2], [4]] and outcomes[4:6] == [[10], [12]]
    assert all(isinstance(o, ValueError) and "poisoned" in str(o) for o in outcomes[2:4])


def test_a_batch_function_returning_the_wrong_count_is_an_error_for_that_batch():
    async def short(items):
        return items[:-1]

    async def main():
        async with Batcher(short, max_batch_size=2, max_delay_s=3600, queue_size=10) as batcher:
            outcomes = await asyncio.gather(batcher.submit([1]), batcher.submit([2]), return_exceptions=True)
        return outcomes

    outcomes = run(main())
    assert all(isinstance(o, RuntimeError) and "returned 1 outputs for 2 inputs" in str(o) for o in outcomes)


def test_a_full_queue_refuses_at_once_with_retry_after():
    async def main():
        gate = asyncio.Event()
        fn = Recorder(pause=gate)
        async with Batcher(fn, max_batch_size=2, max_delay_s=0, queue_size=3) as batcher:
            running = asyncio.ensure_future(batcher.submit([1, 2]))  # taken into a batch that waits on the gate
            while not fn.batches:
                await asyncio.sleep(0)
            queued = asyncio.ensure_future(batcher.submit([3, 4, 5]))  # fills the queue of 3
            await asyncio.sleep(0)
            with pytest.raises(Overloaded) as refused:
                await batcher.submit([6])
            gate.set()
            results = await asyncio.gather(running, queued)
        return refused.value, results

    error, results = run(main())
    assert error.status == 503 and error.headers == {"Retry-After": "1"}
    assert "queue is full (3 of 3" in error.message
    assert results == [[2, 4], [6, 8, 10]]


def test_items_past_their_deadline_fail_without_running():
    async def main():
        gate = asyncio.Event()
        fn = Recorder(pause=gate)
        async with Batcher(fn, max_batch_size=1, max_delay_s=0, queue_size=10) as batcher:
            loop = asyncio.get_running_loop()
            first = asyncio.ensure_future(batcher.submit([1]))
            while not fn.batches:
                await asyncio.sleep(0)
            late = asyncio.ensure_future(batcher.submit([2], deadline=loop.time() + 0.01))
            await asyncio.sleep(0.05)  # the deadline passes while [1] holds the batcher
            gate.set()
            outcomes = await asyncio.gather(first, late, return_exceptions=True)
        return fn.batches, outcomes

    batches, outcomes = run(main())
    assert batches == [[1]]
    assert outcomes[0] == [2]
    assert isinstance(outcomes[1], DeadlineExceeded) and outcomes[1].status == 504


def test_a_caller_that_gave_up_is_skipped():
    async def main():
        gate = asyncio.Event()
        fn = Recorder(pause=gate)
        async with Batcher(fn, max_batch_size=1, max_delay_s=0, queue_size=10) as batcher:
            first = asyncio.ensure_future(batcher.submit([1]))
            while not fn.batches:
                await asyncio.sleep(0)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(batcher.submit([2]), timeout=0.01)
            kept = asyncio.ensure_future(batcher.submit([3]))
            gate.set()
            results = await asyncio.gather(first, kept)
        return fn.batches, results

    batches, results = run(main())
    assert batches == [[1], [3]]  # [2] never reached the batch function, and no batch was empty
    assert results == [[2], [6]]


def test_close_runs_what_is_queued_then_refuses_new_items():
    async def main():
        fn = Recorder()
        batcher = Batcher(fn, max_batch_size=8, max_delay_s=3600, queue_size=10)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit([i])) for i in range(3)]
        await asyncio.sleep(0)
        await batcher.close()  # does not wait an hour: closing releases the partial batch
        with pytest.raises(Overloaded):
            await batcher.submit([9])
        return fn.batches, await asyncio.gather(*pending)

    batches, results = run(main())
    assert batches == [[0, 1, 2]]
    assert results == [[0], [2], [4]]


def test_bad_settings_are_refused_with_the_values():
    with pytest.raises(ValueError, match="got 0, 1, 0.01"):
        Batcher(Recorder(), max_batch_size=0, max_delay_s=0.01, queue_size=1)


def test_a_partial_batch_goes_at_once_when_nothing_else_is_on_its_way():
    async def main():
        fn = Recorder()
        on_its_way = [1]  # one more item is still "decoding" upstream
        async with Batcher(fn, max_batch_size=8, max_delay_s=3600, queue_size=10, incoming=lambda: on_its_way[0]) as batcher:
            first = asyncio.ensure_future(batcher.submit([1]))
            await asyncio.sleep(0.05)
            assert fn.batches == []  # waits: the hint says another item is coming
            on_its_way[0] = 0
            second = asyncio.ensure_future(batcher.submit([2]))  # it arrives; nothing else is coming
            results = await asyncio.gather(first, second)
            alone = await batcher.submit([3])  # concurrency 1: no wait at all, despite the hour's delay
        return fn.batches, results, alone

    batches, results, alone = run(main())
    assert batches == [[1, 2], [3]]
    assert results == [[2], [4]] and alone == [6]


def test_nudge_releases_a_batch_whose_expected_item_will_not_come():
    async def main():
        fn = Recorder()
        on_its_way = [1]
        async with Batcher(fn, max_batch_size=8, max_delay_s=3600, queue_size=10, incoming=lambda: on_its_way[0]) as batcher:
            first = asyncio.ensure_future(batcher.submit([1]))
            await asyncio.sleep(0.05)
            on_its_way[0] = 0  # the other upload failed to decode
            batcher.nudge()
            result = await first
        return fn.batches, result

    assert run(main()) == ([[1]], [2])


def test_async_with_closes_the_batcher_even_when_its_body_fails():
    async def main():
        fn = Recorder()
        with pytest.raises(KeyError):
            async with Batcher(fn, max_batch_size=2, max_delay_s=3600, queue_size=10) as batcher:
                pending = asyncio.ensure_future(batcher.submit([1]))
                await asyncio.sleep(0)
                raise KeyError("the body failed")
        with pytest.raises(Overloaded):
            await batcher.submit([2])
        return await pending

    assert run(main()) == [2]  # closing ran what was already queued


def test_instances_run_that_many_batches_at_once_and_no_more():
    async def main():
        pause = asyncio.Event()
        fn = Recorder(pause=pause)
        async with Batcher(fn, max_batch_size=2, max_delay_s=3600, queue_size=100, instances=2) as batcher:
            calls = [asyncio.ensure_future(batcher.submit([i])) for i in range(6)]
            for _ in range(20):  # let the loop form every batch it may
                await asyncio.sleep(0)
            running = [list(b) for b in fn.batches]  # both instances busy, each with a full batch
            queued = batcher.pending
            pause.set()
            results = await asyncio.gather(*calls)
        return running, queued, fn.batches, results

    running, queued, batches, results = run(main())
    assert running == [[0, 1], [2, 3]] and queued == 2  # the third batch waits for a free instance
    assert batches == [[0, 1], [2, 3], [4, 5]]
    assert results == [[0], [2], [4], [6], [8], [10]]


def test_a_failing_batch_on_one_instance_leaves_the_other_running():
    async def main():
        fn = Recorder(fail_on=13)
        async with Batcher(fn, max_batch_size=2, max_delay_s=3600, queue_size=100, instances=2) as batcher:
            outcomes = await asyncio.gather(*(batcher.submit([x]) for x in (1, 2, 13, 4, 5, 6)), return_exceptions=True)
        return outcomes

    outcomes = run(main())
    assert [type(o).__name__ if isinstance(o, Exception) else o for o in outcomes] == [
        [2], [4], "ValueError", "ValueError", [10], [12]]


def test_instances_must_be_at_least_one():
    with pytest.raises(ValueError, match="instances >= 1"):
        Batcher(Recorder(), max_batch_size=2, max_delay_s=0, queue_size=10, instances=0)
