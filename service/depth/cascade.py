"""`model=auto`: the ladder as a cascade, with latency budgets (docs/cascade.md).

Each image runs on the shallowest rung; an image whose confidence is below that rung's threshold
goes on to the next rung, and so on; the last rung's answer stands. Escalated images are submitted
to the deeper model's own pipeline, so they batch with its other traffic, and they are prepared
again from their original bytes for it (its preprocessing may differ: torchvision's resnet152 V2
resizes to 232, resnet18 to 256). The shallow model's inference is never repeated.

A budget (`budget_ms`) bends the depth instead of failing the request: an escalation happens only
when the deeper rung's expected completion (batches queued ahead of it times its running batch-time
estimate) fits in what is left of the budget, and an escalation that still runs past the budget is
abandoned; either way the shallower answer is returned and says why. Only the shallowest rung can
refuse (503 when its queue is full).

The thresholds come from the cascade file that `resnet-calibrate` writes next to the models
(service/depth/cascade_file.py); without one, DEFAULT_POLICY applies and GET /models says "uncalibrated".
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import numpy as np

from service import trace
from service.depth.abstain import Rule
from service.errors import Overloaded
from service.depth.ladder import Ladder
from service.metrics import Metrics
from service.engine.pipeline import ModelPipeline


def max_softmax(p: np.ndarray) -> np.ndarray:
    """Largest class probability: the classic confidence (Hendrycks & Gimpel 2017)."""
    return p.max(axis=-1)


def margin(p: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability."""
    top2 = np.partition(p, -2, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def negentropy(p: np.ndarray) -> np.ndarray:
    """1 - entropy / log(num_classes): 1 for a one-hot answer, 0 for the uniform one, so that, as
    for the other signals, a higher value means more confident."""
    entropy = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=-1)
    return 1.0 - entropy / math.log(p.shape[-1])


# Signal name -> [..., num_classes] probabilities to [...] confidences in [0, 1].
SIGNALS = {"max_softmax": max_softmax, "margin": margin, "entropy": negentropy}


@dataclass(frozen=True)
class Policy:
    """When to escalate: confidence `signal` below thresholds[i] sends an image from rung i to i + 1."""

    signal: str
    thresholds: tuple[float, ...]  # one per rung but the last
    calibrated: bool
    source: str | None = None  # the cascade file it was read from
    gflops: dict[str, float] = field(default_factory=dict)  # measured cost per image, by model name
    abstain: dict[str, Rule] = field(default_factory=dict)  # calibrated abstention, by model name


# Without a calibration file: escalate an image whose top class has less than half the probability.
DEFAULT_SIGNAL, DEFAULT_THRESHOLD = "max_softmax", 0.5


def default_policy(ladder: Ladder) -> Policy:
    """The documented uncalibrated policy for this ladder."""
    return Policy(DEFAULT_SIGNAL, (DEFAULT_THRESHOLD,) * (len(ladder.rungs) - 1), calibrated=False)


@dataclass
class Answer:
    """One image's way up the ladder."""

    row: np.ndarray  # the answering rung's probabilities
    path: list[str]
    confidence: float = 0.0  # the signal on the answering rung's output
    threshold: float | None = None  # the answering rung's threshold (None on the last rung)
    skipped: str | None = None  # why an escalation the threshold asked for did not happen


class Cascade:
    """Runs `model=auto` over the ladder's pipelines, with the policy's thresholds."""

    def __init__(self, ladder: Ladder, policy: Policy, pipelines: dict[str, ModelPipeline], metrics: Metrics):
        self.ladder, self.policy, self.pipelines, self.metrics = ladder, policy, pipelines, metrics
        self.signal = SIGNALS[policy.signal]

    def expected_seconds(self, name: str, count: int) -> float:
        """When `count` more images queued on `name` now would be answered: the batches ahead of
        and including them, `instances` at a time, each at the running batch-time estimate, plus one
        batching delay."""
        pipeline = self.pipelines[name]
        config = pipeline.config
        batches = math.ceil((pipeline.inflight + count) / pipeline.max_batch_size)
        return math.ceil(batches / pipeline.instances) * pipeline.batch_seconds + config.max_delay_s

    def _skip_reason(self, name: str, count: int, budget_deadline: float | None) -> str | None:
        pipeline = self.pipelines[name]
        if pipeline.inflight + count > pipeline.queue_size:
            return "overloaded"
        if budget_deadline is not None:
            left = budget_deadline - asyncio.get_running_loop().time()
            if self.expected_seconds(name, count) > left:
                return "budget"
        return None

    async def classify(self, payloads: list[bytes], deadline: float, budget_deadline: float | None) -> list[Answer]:
        """One Answer per image, in order. Only the first rung's refusals reach the caller."""
        rungs = self.ladder.rungs
        rows = await self.pipelines[rungs[0]].classify(payloads, deadline)
        answers = [Answer(row, [rungs[0]]) for row in rows]
        pending = list(range(len(payloads)))
        for level, threshold in enumerate(self.policy.thresholds):
            name, deeper = rungs[level], rungs[level + 1]
            escalate = []
            for i in pending:
                answers[i].confidence = float(self.signal(answers[i].row))
                answers[i].threshold = threshold
                self.metrics.cascade_confidence.observe(answers[i].confidence, name)
                if answers[i].confidence < threshold:
                    escalate.append(i)
            if not escalate:
                break
            reason = self._skip_reason(deeper, len(escalate), budget_deadline)
            if reason is None:
                try:
                    with trace.span("escalation", **{"from": name, "to": deeper, "images": len(escalate)}):
                        async with asyncio.timeout_at(budget_deadline):
                            rows = await self.pipelines[deeper].classify([payloads[i] for i in escalate], deadline)
                except Overloaded:  # filled up between the check and the submit
                    reason = "overloaded"
                except TimeoutError:  # only the budget's timeout: the request's own surrounds this call
                    reason = "budget"
            if reason is not None:
                for i in escalate:
                    answers[i].skipped = reason
                self.metrics.cascade_skipped.inc(name, reason, amount=len(escalate))
                break
            self.metrics.cascade_escalations.inc(name, deeper, amount=len(escalate))
            for i, row in zip(escalate, rows):
                answers[i].row, answers[i].threshold = row, None
                answers[i].path.append(deeper)
            pending = escalate
        for answer in answers:
            if answer.threshold is None:  # answered by a rung that did not test it yet
                answer.confidence = float(self.signal(answer.row))
                self.metrics.cascade_confidence.observe(answer.confidence, answer.path[-1])
            self.metrics.cascade_answers.inc(answer.path[-1])
        return answers
