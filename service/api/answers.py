"""The answers of /classify: a Result of the data plane as the JSON a client reads (api/schemas.py).

One image answers {model, predictions}; several answer {model, results}. `model=auto` adds each
image's way up the ladder, abstention each verdict, and explanations each map and embedding.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.api import explain, schemas
from service.dataplane import AUTO, Result


@dataclass(frozen=True)
class Asks:
    """What a /classify request asks beyond the top k: maps, their PNG overlays, embeddings."""

    cam: bool = False
    cam_png: bool = False
    embedding: bool = False

    @property
    def explain(self) -> frozenset[str]:
        return frozenset({"cam"} if self.cam or self.cam_png else set()) | ({"embedding"} if self.embedding else set())


def _predictions(card, row: np.ndarray, k: int, asks: Asks, outputs: dict, pixels) -> list[schemas.Prediction]:
    """The top k; with cam/cam_png, each prediction among the graph's top maps carries its map."""
    predictions = schemas.top_k(card, row, k)
    if not (asks.cam or asks.cam_png):
        return predictions
    crop = Image.fromarray(pixels) if pixels is not None and pixels.dtype == np.uint8 and pixels.ndim == 3 else None
    for prediction in predictions:
        raw = explain.class_map(outputs["cam"], outputs["cam_classes"], prediction.class_index)
        if raw is None:  # beyond the graph's top k maps
            continue
        heat = explain.heatmap(raw)
        if asks.cam:
            prediction.cam = schemas.ClassMap(**heat.to_json())
        if asks.cam_png and crop is not None:
            prediction.cam_png = base64.b64encode(explain.overlay_png(heat, crop, None)).decode("ascii")
    return predictions


def answer(result: Result, k: int, asks: Asks = Asks()) -> schemas.Classification | schemas.BatchClassification:
    """One image answers {model, predictions}; several answer {model, results}; auto adds each path,
    abstention each verdict, explanations each map and embedding."""
    card = result.card
    verdicts = result.verdicts or [None] * len(result.rows)
    outputs = result.explanations or [{}] * len(result.rows)
    inputs = result.inputs or [None] * len(result.rows)

    def top(i: int, row: np.ndarray) -> list[schemas.Prediction]:
        return _predictions(card, row, k, asks, outputs[i], inputs[i])

    def extra(i: int) -> dict:
        verdict, fields = verdicts[i], {}
        if verdict is not None:
            why = schemas.Abstention(verdict.reason, verdict.confidence, verdict.threshold)
            fields.update(abstained=verdict.abstained, abstention=why)
        if asks.embedding:
            fields["embedding"] = explain.embedding(outputs[i]["embedding"])
        return fields

    def step(answer) -> schemas.CascadeStep:
        policy = result.policy
        return schemas.CascadeStep(
            answer.path, policy.signal, round(answer.confidence, 6), answer.threshold, answer.skipped, policy.calibrated
        )  # fmt: skip

    if result.answers is None:
        if len(result.rows) == 1:
            return schemas.Classification(result.model, top(0, result.rows[0]), **extra(0))
        results = [schemas.ImageResult(top(i, r), **extra(i)) for i, r in enumerate(result.rows)]
        return schemas.BatchClassification(result.model, results)
    answers = result.answers
    if len(answers) == 1:
        a = answers[0]
        return schemas.Classification(a.path[-1], top(0, a.row), step(a), **extra(0))
    results = [schemas.ImageResult(top(i, a.row), a.path[-1], step(a), **extra(i)) for i, a in enumerate(answers)]
    return schemas.BatchClassification(AUTO, results)
