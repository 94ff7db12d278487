"""The data plane: every classification, whichever protocol asked, takes this one path.

    api/ parses --> Service.call(model, depth) --> call.admit --> call.read --> call.classify --> api/ encodes

`Service` owns the per-model pipelines (engine/), the depth ladder and the cascade (depth/), the
shared decode pool, the read budget and the metrics. A `Call` is one request's classification:
it resolves the target (a served name, `auto`, or a depth), refuses from the headers what cannot be
served (readiness, admission), bounds the whole request by its deadline and its budget, dispatches
to one model or to the cascade, and counts the request in the metrics whatever the outcome. The
protocols only parse and encode; neither touches a session, the ladder or the cascade.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator

import numpy as np

from artifact import ModelCard
from service import errors, trace
from service.config import ServeConfig
from service.depth import ladder as ladders
from service.depth import abstain as abstention
from service.depth.cascade import Answer, Cascade, Policy
from service.engine import admission
from service.engine.admission import ByteBudget
from service.engine.pipeline import ModelPipeline
from service.engine.runtime import LoadedModel
from service.metrics import Metrics

log = logging.getLogger("service.dataplane")

AUTO = "auto"  # the cascade's model name in both protocols: model=auto, /models/auto/classify, /v2/models/auto


@dataclass(frozen=True)
class RungInfo:
    """One rung of the ladder as GET /models shows it."""

    name: str
    depth: int
    precision: str
    threshold: float | None  # below it this rung escalates; None on the last rung
    gflops: float | None  # measured by resnet-calibrate, if calibrated
    batch_ms: float  # the running estimate of one batch's inference time


@dataclass
class Result:
    """One classification's answer, before a protocol encodes it."""

    model: str  # the model asked for: a served name, or AUTO
    card: ModelCard  # the class list and names of every row (the ladder shares one)
    rows: list[np.ndarray]  # probabilities per image, in request order
    answered_by: list[str]  # the model that answered each image
    answers: list[Answer] | None = None  # AUTO only: each image's way up the ladder
    policy: Policy | None = None  # AUTO only: the cascade's signal and calibration
    verdicts: list[abstention.Verdict] | None = None  # when abstention was asked: one per image
    # When explanations were asked: each image's outputs from its answering model (embedding, cam,
    # cam_classes) and the input that model saw (the crop's pixels, for overlays).
    explanations: list[dict[str, np.ndarray]] | None = None
    inputs: list[np.ndarray] | None = None


class Call:
    """One request's classification: `async with service.call(model, depth) as call:`.

    Inside the block the protocol may refuse (its own 4xx), then `admit` (readiness and admission,
    before a byte of the body is read), `read` the body, and `classify`. Leaving the block releases
    the body's read budget, turns the deadline's timeout into a 504, and counts the request."""

    def __init__(self, service: Service, model: str | None, depth: int | None, started: float) -> None:
        self.service = service
        self.started = started
        self.deadline = started + service.config.request_timeout_s
        self.budget_ms: float | None = None
        self.budget_deadline: float | None = None
        self.label = "unknown"  # the metrics' model label until the target is known to be served
        self.images = 0
        self._asked = (model, depth)
        self._ticket: admission.Ticket | None = None

    async def __aenter__(self) -> Call:
        self._timeout = asyncio.timeout_at(self.deadline)
        await self._timeout.__aenter__()
        try:
            self.name, self.pipeline = self.service.target(*self._asked)
        except BaseException as error:
            await self.__aexit__(type(error), error, error.__traceback__)
            raise
        self.label = self.name
        return self

    async def __aexit__(self, kind, error, traceback) -> bool:
        status = 200
        try:
            try:
                await self._timeout.__aexit__(kind, error, traceback)
                if isinstance(error, TimeoutError):  # the budget's own, shorter timeout
                    raise error
            except TimeoutError:
                raise self._deadline_error() from None
            finally:
                if self._ticket is not None:
                    self._ticket.release()
        except errors.ServiceError as raised:
            status = raised.status
            raise
        except BaseException:
            status = 500
            raise
        else:
            if isinstance(error, errors.ServiceError):
                status = error.status
            elif error is not None:
                status = 500
        finally:
            metrics = self.service.metrics
            metrics.requests.inc(self.label, str(status))
            metrics.request_seconds.observe(asyncio.get_running_loop().time() - self.started, self.label)
        return False

    def _deadline_error(self) -> errors.DeadlineExceeded:
        config = self.service.config
        if self.budget_deadline is not None and self.budget_deadline < self.deadline:
            return errors.DeadlineExceeded(f"no answer within budget_ms = {self.budget_ms}")
        return errors.DeadlineExceeded(f"no answer within request_timeout_s = {config.request_timeout_s} s")

    @property
    def auto(self) -> bool:
        return self.name == AUTO

    @property
    def card(self) -> ModelCard:
        """The card the answer is described by (for AUTO, the shallowest rung's: the ladder shares classes)."""
        return self.pipeline.model.card

    @property
    def model(self) -> LoadedModel:
        return self.pipeline.model

    def admit(self, content_length: int | None, max_body_bytes: int | None = None) -> None:
        """Refuse from the headers (503 warming up or at capacity, 500 dead batcher, 413 over
        `max_body_bytes`, by default the setting), else take the announced body bytes from the read
        budget until the call ends."""
        service = self.service
        if not service.warm:
            raise errors.NotReady()
        limit = service.config.max_body_bytes if max_body_bytes is None else max_body_bytes
        with trace.span("admission", model=self.name):
            self._ticket = admission.admit(self.pipeline, service.read_budget, content_length, limit)

    def read(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The body's chunks, counted against the read budget (after `admit`)."""
        assert self._ticket is not None, "admit() before read()"
        return self._ticket.read(stream)

    async def classify(
        self,
        images: list[bytes] | None = None,
        pixels: list[np.ndarray] | None = None,
        budget_ms: float | None = None,
        abstain: bool = False,
        explain: frozenset[str] = frozenset(),
    ) -> Result:
        """Probabilities for the images (file bytes) or the pixels (the model's own input, per image).

        `budget_ms` bends the cascade's depth; for a named model it is the request's deadline.
        `abstain` (always on with the server's setting) adds each image's verdict from its answering model.
        `explain` ("cam", "embedding") adds each image's explanations from its answering model."""
        self.images = len(images if images is not None else pixels)
        if budget_ms is not None:
            self.budget_ms, self.budget_deadline = budget_ms, self.started + budget_ms / 1000.0
        if explain:
            self._check_explains(explain)
        if explain and not self.auto:
            result = await self._explained(images, pixels)
        else:
            result = await self._classify(images, pixels)
            if explain:  # the cascade's answering rungs, again, for these images only
                await self._explain_answers(result, images)
        if abstain or self.service.config.abstain:
            rules = self.service.cascade.policy.abstain
            result.verdicts = [abstention.judge(row, rules.get(name)) for row, name in zip(result.rows, result.answered_by)]
        return result

    def _check_explains(self, explain: frozenset[str]) -> None:
        names = self.service.ladder.rungs if self.auto else (self.name,)
        for name in names:
            missing = sorted(explain - set(self.service.models[name].explains))
            if missing:
                raise errors.InvalidParameter(
                    f"model {name!r} cannot answer {', '.join(missing)}: its file was exported without those "
                    "outputs (re-export it with this version of resnet-export)", parameter=missing[0],
                )  # fmt: skip

    async def _explained(self, images, pixels) -> Result:
        """A named model's answer and explanations from one run of their own."""
        async with asyncio.timeout_at(min(self.deadline, self.budget_deadline or self.deadline)):
            inputs, outputs = await self.pipeline.explain(payloads=images, arrays=pixels)
        rows = [output.pop("probabilities") for output in outputs]
        return Result(self.name, self.card, rows, [self.name] * len(rows), explanations=outputs, inputs=inputs)

    async def _explain_answers(self, result: Result, images: list[bytes]) -> None:
        """Explanations for the cascade's answers: each answering rung runs its images once more."""
        result.explanations, result.inputs = [{}] * len(images), [None] * len(images)
        for name in dict.fromkeys(result.answered_by):
            indices = [i for i, by in enumerate(result.answered_by) if by == name]
            inputs, outputs = await self.service.pipelines[name].explain(payloads=[images[i] for i in indices])
            for i, array, output in zip(indices, inputs, outputs):
                output.pop("probabilities")
                result.explanations[i], result.inputs[i] = output, array

    async def _classify(self, images, pixels) -> Result:
        """A named model's answer through its batcher, or the cascade's for AUTO."""
        if self.auto:
            if images is None:
                raise errors.InvalidParameter(f"model {AUTO!r} takes image files only", parameter="model")
            answers = await self.service.cascade.classify(images, self.deadline, self.budget_deadline)
            rows, answered_by = [a.row for a in answers], [a.path[-1] for a in answers]
            return Result(AUTO, self.card, rows, answered_by, answers, self.service.cascade.policy)
        limit = min(self.deadline, self.budget_deadline or self.deadline)
        async with asyncio.timeout_at(limit):
            if images is not None:
                rows = await self.pipeline.classify(images, limit)
            else:
                rows = await self.pipeline.infer(pixels, limit)
        return Result(self.name, self.card, rows, [self.name] * len(rows))


class Service:
    """Every model's pipeline, the ladder and its cascade, the shared pools, the metrics and readiness."""

    def __init__(
        self, config: ServeConfig, models: dict[str, LoadedModel], ladder: ladders.Ladder, policy: Policy
    ) -> None:
        self.config = config
        self.models = models
        self.ladder = ladder
        self.metrics = Metrics(lambda: {(name,): p.inflight for name, p in self.pipelines.items()})
        self.decode_pool = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="decode")
        self.pipelines = {name: ModelPipeline(m, config, self.decode_pool, self.metrics) for name, m in models.items()}
        self.cascade = Cascade(ladder, policy, self.pipelines, self.metrics)
        self.read_budget = ByteBudget(config.read_budget_bytes)  # request bodies being read or held
        self.warm = False
        self._warm_task: asyncio.Task | None = None

    # --- what a request may ask for ----------------------------------------------------------------

    def target(self, model: str | None, depth: int | None = None) -> tuple[str, ModelPipeline]:
        """The served name (or AUTO) a request's `model` and `depth` ask for, and the pipeline that
        starts it: UnknownModel (404) lists what is served, a contradictory depth is a 422."""
        name = ladders.resolve(self.ladder, self.models, model, depth) or self.ladder.default_model
        if name == AUTO:
            return name, self.pipelines[self.ladder.rungs[0]]
        if name not in self.pipelines:
            available = list(self.pipelines)
            listed = ", ".join([*available, AUTO])
            raise errors.UnknownModel(f"unknown model {name!r}; available: {listed}", available=available)
        return name, self.pipelines[name]

    def label(self, model: str | None) -> str:
        """The metrics' model label for a request refused before it reached `call`."""
        name = model or self.ladder.default_model
        return name if name in self.pipelines or name == AUTO else "unknown"

    def call(self, model: str | None, depth: int | None = None) -> Call:
        """One classification: see `Call`."""
        return Call(self, model, depth, asyncio.get_running_loop().time())

    def rungs(self) -> list[RungInfo]:
        """The ladder with each rung's threshold, measured cost and batch-time estimate."""
        policy = self.cascade.policy
        return [
            RungInfo(name, depth, self.models[name].card.precision,
                     policy.thresholds[i] if i < len(policy.thresholds) else None, policy.gflops.get(name),
                     round(self.pipelines[name].batch_seconds * 1000, 3))
            for i, (name, depth) in enumerate(zip(self.ladder.rungs, self.ladder.depths))
        ]  # fmt: skip

    # --- health and lifetime -----------------------------------------------------------------------

    @property
    def failures(self) -> dict[str, str]:
        """Model name -> why its batching loop died; a non-empty answer means restart me."""
        return {name: repr(p.batcher.failure) for name, p in self.pipelines.items() if p.batcher.failure is not None}

    @property
    def ready(self) -> bool:
        """Warm, and every batcher alive: a dead loop turns /health/ready to 503."""
        return self.warm and not self.failures

    async def start(self) -> None:
        """Start the batchers and, in the background, the warm-up that makes the service ready."""
        for pipeline in self.pipelines.values():
            pipeline.start()
        self._warm_task = asyncio.get_running_loop().create_task(self._warm_up(), name="warm-up")

    async def _warm_up(self) -> None:
        for name, pipeline in self.pipelines.items():
            try:
                seconds = await pipeline.warm_up()
            except Exception:  # noqa: BLE001 - stay live and unready, say why, let the orchestrator act
                log.exception("warm-up of %s failed: the service stays unready", name, extra={"model": name})
                return
            memory = pipeline.model.device_memory_bytes  # GPU only: loading plus warm-up
            on_gpu = "" if memory is None else f", {memory / 2**20:.0f} MiB of GPU memory"
            log.info(
                "warmed up %s in %.2f s%s; batches of up to %d, %d images queued at most", name, seconds, on_gpu,
                pipeline.max_batch_size, pipeline.queue_size,
                extra={"model": name, "device_memory_bytes": memory, "max_batch_size": pipeline.max_batch_size,
                       "queue_size": pipeline.queue_size},
            )  # fmt: skip
        self.warm = True
        log.info("ready: serving %s", ", ".join(self.pipelines), extra={"models": list(self.pipelines)})

    async def close(self) -> None:
        """Stop warming up, drain every batcher, release the thread pools."""
        if self._warm_task is not None and not self._warm_task.done():
            self._warm_task.cancel()
            await asyncio.gather(self._warm_task, return_exceptions=True)
        for pipeline in self.pipelines.values():
            await pipeline.close()
        self.decode_pool.shutdown(wait=True)
