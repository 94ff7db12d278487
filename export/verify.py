"""Proof that an exported graph computes what the checkpoint computes (docs/export.md, Verification).

fp32 is held to numerical parity with PyTorch on the same images at several batch sizes; fp16 and
int8 cannot be (they round on purpose), so they are judged by their top-1 predictions against the
fp32 graph's on validation images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.config import FP16_MIN_AGREEMENT, INT8_MAX_TOP1_DROP, PARITY_BATCHES, PARITY_TOLERANCE, ExportError
from export import verify_explain
from export.graph import OUTPUT_NAME as LOGITS

CPU = ["CPUExecutionProvider"]


class VerificationError(ExportError):
    """The exported graph does not match the checkpoint closely enough; nothing is written."""


def check_graph(proto: onnx.ModelProto) -> None:
    """onnx.checker with shape inference; its complaint becomes a one-line VerificationError."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VerificationError(f"onnx.checker rejects the graph: {first}") from error


def session(proto: onnx.ModelProto, providers: list[str] = CPU) -> ort.InferenceSession:
    """An ONNX Runtime session on the in-memory graph, warnings off (they go to stdout)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the fp16 graph's CPU fallback warns per node
    # Idle intra-op threads spin by default; next to other processes on few cores that spinning
    # steals the time the working threads need (verification is not the place to chase latency).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(proto.SerializeToString(), options, providers=providers)


def fp16_providers() -> list[str]:
    """CUDA where a GPU is present (fp16's target), else the CPU, which computes it in float32."""
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        return ["CUDAExecutionProvider", *CPU]
    return CPU


@dataclass(frozen=True)
class Parity:
    """fp32 ORT against torch at one batch size."""

    batch: int  # images in the call
    max_abs_diff: float  # max |ORT logit - torch logit| over the batch
    max_abs_logit: float  # max |torch logit|: the scale the tolerance is relative to
    top5_ties: int  # images whose ordered top-5 differs only between classes tied within the tolerance


def top_k_agreement(expected: np.ndarray, got: np.ndarray, k: int, allowed: float) -> tuple[bool, int]:
    """Whether `got` ranks every row's top k like `expected`, and in how many rows only by ties.

    Two classes whose expected logits lie within `allowed` of each other are a tie that numerical
    noise may break either way (the low-ranked classes of a 10-class model often sit 1e-5 apart),
    so either order is right: rank by rank, the class `got` puts there must have an expected logit
    within `allowed` of the one `expected` puts there."""
    top_expected = np.argsort(-expected, axis=1, kind="stable")[:, :k]
    top_got = np.argsort(-got, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(expected))[:, None]
    gap = np.abs(expected[rows, top_got] - expected[rows, top_expected])
    return bool((gap <= allowed).all()), int((top_expected != top_got).any(axis=1).sum())


def parity(model: torch.nn.Module, sess: ort.InferenceSession, images: np.ndarray,
           batches: Iterable[int] = PARITY_BATCHES) -> list[Parity]:
    """Run torch and ORT on the first b images for each batch size b; raise if any is off."""
    need = max(batches)
    if len(images) < need:  # a tiny validation set: repeat it rather than invent inputs
        images = np.concatenate([images] * -(-need // len(images)))
    input_name = sess.get_inputs()[0].name
    results = []
    for b in batches:
        x = np.ascontiguousarray(images[:b])  # the graph's own input: uint8 pixels or float32
        with torch.no_grad():
            expected = model.eval()(torch.from_numpy(x)).numpy()
        (got,) = sess.run([LOGITS], {input_name: x})  # by name: the graph has other outputs after it
        if got.shape != expected.shape:
            raise VerificationError(f"batch {b}: ONNX output shape {got.shape}, torch {expected.shape}")
        if not np.isfinite(expected).all():
            raise VerificationError(f"fp32 parity failed at batch {b}: torch's own logits are not finite")
        max_abs_diff, max_abs_logit = float(np.abs(got - expected).max()), float(np.abs(expected).max())
        allowed = PARITY_TOLERANCE * max_abs_logit
        if not np.isfinite(got).all() or max_abs_diff > allowed:
            raise VerificationError(
                f"fp32 parity failed at batch {b}: max |ORT - torch| = {max_abs_diff:.3g}, "
                f"allowed {PARITY_TOLERANCE:g} x max |logit| = {allowed:.3g}"
            )
        k = min(5, expected.shape[1])
        agree, ties = top_k_agreement(expected, got, k, allowed)
        if not agree:
            raise VerificationError(f"fp32 parity failed at batch {b}: ONNX and torch top-{k} classes differ")
        results.append(Parity(b, max_abs_diff, max_abs_logit, ties))
    return results


@dataclass(frozen=True)
class Judgement:
    """A reduced-precision graph's top-1 predictions against the fp32 graph's, on labelled images."""

    precision: str  # "fp16" or "int8"
    images: int  # validation images compared
    agreement: float  # percent of images where both graphs predict the same class
    reference_top1: float  # fp32 top-1 accuracy, percent
    top1: float  # the reduced-precision graph's top-1 accuracy, percent
    provider: str  # the execution provider that ran the reduced graph
    maps: verify_explain.MapJudgement | None = None  # the explanation outputs against fp32's; None without them

    @property
    def top1_drop(self) -> float:
        """Accuracy points lost against fp32 (negative when it gained)."""
        return self.reference_top1 - self.top1

    def summary(self) -> str:
        return (f"{self.precision} on {self.images} validation images ({self.provider}): top-1 agreement "
                f"with fp32 {self.agreement:.2f}%, top-1 {self.top1:.2f}% vs fp32 {self.reference_top1:.2f}% "
                f"(drop {self.top1_drop:+.2f} points)")


def judge(precision: str, reference: ort.InferenceSession, candidate: ort.InferenceSession,
          batches: Iterable[tuple[np.ndarray, np.ndarray]], on_batch: Callable[[int], None] = lambda n: None) -> Judgement:
    """Compare top-1 predictions of two sessions over (images, labels) batches."""
    ref_name, cand_name = reference.get_inputs()[0].name, candidate.get_inputs()[0].name
    total = same = ref_right = cand_right = 0
    explained = verify_explain.has_extras(reference) and verify_explain.has_extras(candidate)
    names = verify_explain.EXTRAS if explained else [LOGITS]
    maps = verify_explain.MapJudgement(precision) if explained else None
    for images, labels in batches:
        ref_out = reference.run(names, {ref_name: images})
        cand_feed = {cand_name: images}
        if maps is not None:
            cand_feed = verify_explain.candidate_feed(cand_feed, ref_out[0].shape[1])
        cand_out = candidate.run(names, cand_feed)
        if maps is not None:
            maps.add(ref_out, cand_out)
        ref_pred, cand_pred = ref_out[0].argmax(axis=1), cand_out[0].argmax(axis=1)
        total += len(labels)
        same += int((ref_pred == cand_pred).sum())
        ref_right += int((ref_pred == labels).sum())
        cand_right += int((cand_pred == labels).sum())
        on_batch(total)
    if total == 0:
        raise VerificationError(f"cannot judge {precision}: the validation set is empty")
    pct = lambda n: 100.0 * n / total  # noqa: E731
    return Judgement(precision, total, pct(same), pct(ref_right), pct(cand_right), candidate.get_providers()[0], maps)


def require(judgement: Judgement) -> Judgement:
    """Raise VerificationError when fp16 agrees too little or int8 loses too much accuracy."""
    if judgement.precision == "fp16" and judgement.agreement < FP16_MIN_AGREEMENT:
        raise VerificationError(
            f"fp16 top-1 agreement with fp32 is {judgement.agreement:.2f}% on {judgement.images} validation "
            f"images, below the required {FP16_MIN_AGREEMENT:g}%"
        )
    if judgement.precision == "int8" and judgement.top1_drop > INT8_MAX_TOP1_DROP:
        raise VerificationError(
            f"int8 top-1 is {judgement.top1:.2f}% vs fp32 {judgement.reference_top1:.2f}% on {judgement.images} "
            f"validation images: a drop of {judgement.top1_drop:.2f} points, over the allowed {INT8_MAX_TOP1_DROP:g}"
        )
    if judgement.maps is not None:
        judgement.maps.require()
    return judgement
