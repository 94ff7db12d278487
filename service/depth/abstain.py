"""When not to trust an answer: selective classification on a calibrated confidence threshold.

A model abstains on an image whose confidence (the largest softmax probability) is below its
threshold. The threshold is chosen on held-out labelled images as the lowest one whose answers,
among those it keeps, are wrong at most `target_risk` of the time: the risk-coverage trade-off of
Geifman & El-Yaniv, "Selective Classification for Deep Neural Networks" (NeurIPS 2017).
`resnet-calibrate` measures it per model next to the cascade (service/depth/calibrate.py) and writes
it into the cascade file; the service reads it back (service/depth/cascade_file.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIGNAL = "max_softmax"  # the confidence abstention reads; the cascade's own signals live in cascade.py
DEFAULT_TARGET_RISK = 0.05


@dataclass(frozen=True)
class Rule:
    """One model's calibrated abstention: answers below `threshold` are not to be trusted."""

    threshold: float  # max softmax below it abstains
    target_risk: float  # the error rate the threshold keeps the given answers at, on the calibration half


@dataclass(frozen=True)
class Verdict:
    """One image's abstention: whether, and why (in words a client can show)."""

    abstained: bool
    reason: str
    confidence: float | None = None
    threshold: float | None = None


def risk_coverage(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, coverage, risk): keeping the images with confidence >= thresholds[i] keeps the
    fraction coverage[i] of them, of which the fraction risk[i] is answered wrongly. Thresholds fall."""
    confidence = probabilities.max(axis=1)
    wrong = probabilities.argmax(axis=1) != labels
    order = np.argsort(-confidence, kind="stable")
    kept = np.arange(1, len(order) + 1)
    risk = np.cumsum(wrong[order]) / kept
    # Ties: a threshold keeps every image of its confidence, so report each tie group at its last member.
    sorted_confidence = confidence[order]
    last = np.r_[sorted_confidence[1:] != sorted_confidence[:-1], True]
    return sorted_confidence[last], kept[last] / len(order), risk[last]


def choose(probabilities: np.ndarray, labels: np.ndarray, target_risk: float) -> float:
    """The lowest threshold whose kept answers have risk <= target_risk; above every confidence
    (abstain on everything) when none does."""
    thresholds, _, risk = risk_coverage(probabilities, labels)
    ok = np.flatnonzero(risk <= target_risk)
    return float(thresholds[ok[-1]]) if len(ok) else float(np.nextafter(thresholds[0], np.inf))


def at(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Coverage and risk of one threshold on labelled images (risk None when nothing is kept)."""
    keep = probabilities.max(axis=1) >= threshold
    wrong = probabilities.argmax(axis=1) != labels
    risk = float(wrong[keep].mean()) if keep.any() else None
    return {"coverage": round(float(keep.mean()), 5), "risk": None if risk is None else round(risk, 5)}


def judge(row: np.ndarray, rule: Rule | None) -> Verdict:
    """One image's verdict from its probabilities; an uncalibrated model never abstains."""
    confidence = float(row.max())
    if rule is None:
        return Verdict(False, "uncalibrated: this model has no abstention threshold (run resnet-calibrate)")
    if confidence < rule.threshold:
        return Verdict(True, f"confidence {confidence:.4f} is below {rule.threshold:.4f}, the threshold that keeps "
                             f"the error rate at {rule.target_risk:.0%} on held-out images", confidence, rule.threshold)  # fmt: skip
    return Verdict(False, f"confidence {confidence:.4f} is at or above {rule.threshold:.4f}", confidence, rule.threshold)
