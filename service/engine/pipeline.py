"""The serving pipeline behind the HTTP layer: admission, decode pool, per-model batcher, inference.

    bytes --decode pool (threads)--> one image's input --Batcher--> one ORT run per batch --> probabilities

An image's input is what the model's card asks for (artifact.preprocess.prepare): uint8 [S, S, 3]
pixels for format-2 cards, float32 [3, S, S] for format-1 files. The batch is stacked
into one buffer per model allocated at start-up, not a fresh array per batch.

Nothing here runs image or tensor work on the event loop: decoding and preprocessing run in a shared
bounded thread pool, inference in one thread per model instance (Pillow and ONNX Runtime release the
GIL), and the loop only moves arrays and futures.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from artifact import preprocess
from service import trace
from service.engine.batching import Batcher
from service.config import ServeConfig
from service.errors import BadImage, InferenceFailed, Overloaded, ServiceError, TooManyPixels
from service.metrics import Metrics
from service.engine.runtime import LoadedModel

log = logging.getLogger("service.engine.pipeline")


def _prepare(data: bytes, prep, max_pixels: int) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    try:
        return preprocess.prepare(data, prep, max_pixels), time.perf_counter() - started
    except preprocess.TooManyPixels as error:
        raise TooManyPixels(str(error), max_pixels=error.max_pixels) from None
    except preprocess.BadImage as error:
        raise BadImage(str(error)) from None


class ModelPipeline:
    """One model's path from image bytes to probabilities, with its bounded admission."""

    def __init__(
        self, model: LoadedModel, config: ServeConfig, decode_pool: ThreadPoolExecutor, metrics: Metrics
    ) -> None:
        self.model = model
        self.config = config
        self.decode_pool = decode_pool
        self.metrics = metrics
        # One thread per instance: the batcher runs that many batches at once, and ORT parallelises
        # inside each run with its share of the cores (runtime.model_threads). The sized path (CUDA)
        # keeps one set of buffers per batch size, so it serves one batch at a time.
        self.instances = 1 if model.runner is not None else config.instances
        self.max_batch_size = config.batch_limit(model.device)
        self.queue_size = config.queue_limit(model.device)
        self.executor = ThreadPoolExecutor(self.instances, thread_name_prefix=f"infer-{model.name}")
        self.batcher: Batcher[np.ndarray, np.ndarray] = Batcher(
            self._run_batch,
            self.max_batch_size,
            config.max_delay_s,
            self.queue_size,
            self._on_batch,
            model.name,
            incoming=lambda: self.decoding,
            instances=self.instances,
        )
        self.decode_slots = asyncio.Semaphore(config.decode_threads)  # this model's decodes in the pool
        self.inflight = 0  # images admitted and not yet answered: decoding, queued or in a batch
        self.decoding = 0  # images admitted and not yet queued for the batcher
        self.batch_seconds = 0.0  # moving average of one batch's inference time, for Retry-After
        # The batch is copied into a buffer, then ONNX Runtime reads it in place: one buffer per
        # instance, taken for a run and given back after it, so none changes under a run.
        prep = model.card.preprocessing
        dtype = np.uint8 if prep.input_dtype == "uint8" else np.float32  # what prepare returns
        self.buffers: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        for _ in range(self.instances if model.runner is None else 0):  # the sized path has its own
            self.buffers.put(np.empty(prep.input_shape(self.max_batch_size), dtype=dtype))

    def start(self) -> None:
        self.batcher.start()

    async def warm_up(self) -> float:
        """Warm-up runs for batch 1 and the largest batch, off the loop; returns seconds taken."""
        sizes = tuple(sorted({1, self.max_batch_size}))
        loop = asyncio.get_running_loop()
        seconds = await loop.run_in_executor(self.executor, self.model.warm_up, sizes, self.config.warmup_runs)
        # A first batch-time estimate before any traffic: model=auto's budget checks need one (cascade.py).
        self.batch_seconds = self.batch_seconds or seconds / (len(sizes) * self.config.warmup_runs)
        return seconds

    async def classify(self, payloads: list[bytes], deadline: float) -> list[np.ndarray]:
        """Probabilities for each image, in order. Raises ServiceError subclasses for the client."""
        count = len(payloads)
        self.check_capacity(count)
        self.inflight += count
        try:
            return await self.batcher.submit(await self._decode_admitted(payloads), deadline)
        finally:
            self.inflight -= count

    async def infer(self, arrays: list[np.ndarray], deadline: float) -> list[np.ndarray]:
        """Probabilities for inputs the client preprocessed itself (the OIP pixel input, service/api/oip.py):
        the same admission and the same batcher as images, without the decode pool."""
        self.check_capacity(len(arrays))
        self.inflight += len(arrays)
        try:
            return await self.batcher.submit(arrays, deadline)
        finally:
            self.inflight -= len(arrays)

    async def explain(
        self, payloads: list[bytes] | None = None, arrays: list[np.ndarray] | None = None
    ) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
        """The inputs (image bytes, or the model's own input) and every output of one run for them:
        probabilities and the graph's explanations (LoadedModel.explain), one dict per image. These
        run as their own batch on the model's inference thread, so a request that asks for no
        explanation never pays for one."""
        count = len(payloads if payloads is not None else arrays)
        self.check_capacity(count)
        self.inflight += count
        try:
            if payloads is not None:
                arrays = await self._decode_admitted(payloads)
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self.executor, self.model.explain, np.stack(arrays))
            return arrays, [{name: value[i] for name, value in outputs.items()} for i in range(count)]
        finally:
            self.inflight -= count

    async def _decode_admitted(self, payloads: list[bytes]) -> list[np.ndarray]:
        """_decode for admitted images, counted as decoding so the batcher knows they are coming."""
        self.decoding += len(payloads)
        try:
            return await self._decode(payloads)
        finally:
            self.decoding -= len(payloads)
            self.batcher.nudge()  # a batch waiting for these images may go now, or without them

    def check_capacity(self, count: int) -> None:
        """503 now if `count` more images would pass queue_size; also asked before a body is read."""
        if self.inflight + count > self.queue_size:
            batches_ahead = math.ceil(self.inflight / (self.max_batch_size * self.instances))
            raise Overloaded(
                f"model {self.model.name!r} is at capacity "
                f"({self.inflight} of {self.queue_size} images in flight)",
                retry_after_s=math.ceil(batches_ahead * self.batch_seconds),
            )

    async def _decode(self, payloads: list[bytes]) -> list[np.ndarray]:
        prep, limit = self.model.card.preprocessing, self.config.max_pixels
        jobs = [self._decode_one(data, prep, limit) for data in payloads]
        with trace.span("decode", model=self.model.name, images=len(payloads)):
            results = await asyncio.gather(*jobs, return_exceptions=True)
        arrays = []
        for index, result in enumerate(results):
            if isinstance(result, BaseException):
                if isinstance(result, ServiceError) and len(payloads) > 1:
                    result.message = f"image {index + 1} of {len(payloads)}: {result.message}"
                    result.details["image"] = index
                    result.args = (result.message,)
                raise result
            array, seconds = result
            self.metrics.preprocess.observe(seconds, self.model.name)
            arrays.append(array)
        return arrays

    async def _decode_one(self, data: bytes, prep, limit: int):
        # The decode pool is shared and first-in first-out: 32 clients flooding resnet152 queued their
        # decodes ahead of a resnet18 request's, which then waited for all of them. Each
        # model may queue at most as many decodes as the pool has threads; the rest wait here, so
        # another model's request waits for at most one round of decodes, not for a whole flood.
        async with self.decode_slots:
            return await asyncio.get_running_loop().run_in_executor(self.decode_pool, _prepare, data, prep, limit)

    def _infer(self, arrays: list[np.ndarray]):
        started = time.perf_counter()
        if self.model.runner is not None:  # the sized path stacks straight into its batch size's buffer
            return self.model.probabilities_of(arrays), time.perf_counter() - started, self.model.timings
        buffer = self.buffers.get_nowait()  # never empty: at most `instances` runs at once
        try:
            batch = np.stack(arrays, out=buffer[: len(arrays)])
            return self.model.probabilities(batch), time.perf_counter() - started, self.model.timings
        finally:
            self.buffers.put(buffer)

    async def _run_batch(self, arrays: list[np.ndarray]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        try:
            probabilities, seconds, device = await loop.run_in_executor(self.executor, self._infer, arrays)
        except Exception as error:  # noqa: BLE001 - ORT's errors become this batch's 500s
            log.exception("inference failed for a batch of %d", len(arrays), extra={"model": self.model.name})
            raise InferenceFailed(f"inference failed for model {self.model.name!r}: {type(error).__name__}") from error
        self.batch_seconds = seconds if not self.batch_seconds else 0.8 * self.batch_seconds + 0.2 * seconds
        self.metrics.inference.observe(seconds, self.model.name)
        if device is not None:  # CUDA: where the batch's time went
            for stage in ("copy_in", "compute", "copy_out"):
                self.metrics.device_seconds.observe(getattr(device, stage), self.model.name, stage)
        self.metrics.batch_size.observe(len(arrays), self.model.name)
        self.metrics.images.inc(self.model.name, amount=len(arrays))
        return probabilities

    def _on_batch(self, waits: list[float]) -> None:
        for wait in waits:
            self.metrics.queue_wait.observe(wait, self.model.name)

    async def close(self) -> None:
        """Run what is queued, then stop the batcher and the inference thread."""
        await self.batcher.close()
        self.executor.shutdown(wait=True)
