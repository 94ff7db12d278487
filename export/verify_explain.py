"""Proof that the explanation outputs (export.explain) compute what the checkpoint computes.

fp32 holds the embedding and the maps to PyTorch's like the logits: on the same images and batches,
within PARITY_TOLERANCE of their own scale. fp16 and int8 round on purpose, so their maps are judged
against the fp32 graph's, for the class fp32 ranks first: the correlation of each map with fp32's
and whether its peak falls on the same cell; the embedding by its cosine similarity with fp32's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import torch

from artifact import CAM_CLASSES_OUTPUT, CAM_K_INPUT, CAM_OUTPUT, EMBEDDING_OUTPUT
from export.config import MAP_GATES, PARITY_BATCHES, PEAK_TIE, PARITY_TOLERANCE, ExportError
from export.graph import OUTPUT_NAME

EXTRAS = [OUTPUT_NAME, EMBEDDING_OUTPUT, CAM_OUTPUT, CAM_CLASSES_OUTPUT]


class MapVerificationError(ExportError):
    """The embedding or the maps do not match closely enough; nothing is written."""


def has_extras(sess: ort.InferenceSession) -> bool:
    return {o.name for o in sess.get_outputs()} >= set(EXTRAS)


def torch_outputs(model: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's logits, pooled embedding, last-block feature maps and classifier weight for `x`."""
    network = getattr(model, "network", model)  # behind export.graph.PixelInput or bare
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        _last_stage(network).register_forward_hook(lambda m, i, out: seen.__setitem__("features", out)),
        network.fc.register_forward_pre_hook(lambda m, args: seen.__setitem__("embedding", args[0])),
    ]
    try:
        with torch.no_grad():
            logits = model.eval()(torch.from_numpy(x))
    finally:
        for hook in hooks:
            hook.remove()
    weight = network.fc.weight.detach().numpy()
    return logits.numpy(), seen["embedding"].numpy(), seen["features"].numpy(), weight


def _last_stage(network: torch.nn.Module) -> torch.nn.Module:
    for name in ("layer4", "layers"):  # torchvision's ResNet; training.cifar_models
        if hasattr(network, name):
            return getattr(network, name)
    raise MapVerificationError(f"{type(network).__name__} has no last stage (layer4 or layers) to check maps against")


@dataclass(frozen=True)
class ExplainParity:
    """fp32 ORT's embedding and maps against torch's at one batch size."""

    batch: int
    embedding_diff: float  # max |ORT - torch| over the embedding
    cam_diff: float  # max |ORT - torch| over the maps of ORT's top-k classes
    cam_scale: float  # max |torch map|: the scale the tolerance is relative to


def parity(model: torch.nn.Module, sess: ort.InferenceSession, images: np.ndarray,
           batches=PARITY_BATCHES) -> list[ExplainParity]:
    """Torch's embedding and maps against the graph's for the first b images; raise if any is off."""
    need = max(batches)
    if len(images) < need:
        images = np.concatenate([images] * -(-need // len(images)))
    results = []
    for b in batches:
        x = np.ascontiguousarray(images[:b])
        _, embedding, features, weight = torch_outputs(model, x)
        _, got_embedding, cam, classes = sess.run(EXTRAS, {sess.get_inputs()[0].name: x})
        # Maps of the classes the graph chose (its logits already match torch's ranking up to ties).
        expected = np.einsum("nkc,nchw->nkhw", weight[classes], features)
        embedding_diff = _checked(f"batch {b}: embedding", got_embedding, embedding)
        cam_diff = _checked(f"batch {b}: class activation maps", cam, expected)
        results.append(ExplainParity(b, embedding_diff, cam_diff, float(np.abs(expected).max())))
    return results


def _checked(what: str, got: np.ndarray, expected: np.ndarray) -> float:
    if got.shape != expected.shape:
        raise MapVerificationError(f"fp32 parity failed, {what}: ONNX shape {got.shape}, torch {expected.shape}")
    diff, allowed = float(np.abs(got - expected).max()), PARITY_TOLERANCE * float(np.abs(expected).max())
    if not np.isfinite(got).all() or diff > allowed:
        raise MapVerificationError(f"fp32 parity failed, {what}: max |ORT - torch| = {diff:.3g}, "
                                   f"allowed {PARITY_TOLERANCE:g} x max |torch| = {allowed:.3g}")
    return diff


@dataclass
class MapJudgement:
    """A reduced-precision graph's maps and embeddings against the fp32 graph's, image by image."""

    precision: str
    correlations: list[float] = field(default_factory=list)  # per image: Pearson r of the top-1 class's map
    peaks_same: list[bool] = field(default_factory=list)  # per image: the candidate peaks where fp32 does, up to ties
    cosines: list[float] = field(default_factory=list)  # per image: cosine of the two embeddings
    cells: int = 0  # h x w; 1 means the maps carry no location and only the embedding is judged

    def add(self, reference: list[np.ndarray], candidate: list[np.ndarray]) -> None:
        """One batch: the fp32 graph's EXTRAS (default k) and the candidate's (k = every class)."""
        _, ref_emb, ref_cam, ref_classes = reference
        _, cand_emb, cand_cam, cand_classes = candidate
        n, self.cells = len(ref_cam), ref_cam.shape[2] * ref_cam.shape[3]
        top = ref_classes[:, 0]
        at = np.argmax(cand_classes == top[:, None], axis=1)  # where the candidate put fp32's top-1 class
        a = ref_cam[:, 0].reshape(n, -1).astype(np.float64)
        b = cand_cam[np.arange(n), at].reshape(n, -1).astype(np.float64)
        self.cosines += list(_cosine(ref_emb.astype(np.float64), cand_emb.astype(np.float64)))
        if self.cells > 1:
            self.correlations += list(_correlation(a, b))
            low, high = a.min(axis=1), a.max(axis=1)
            at_peak = a[np.arange(n), b.argmax(axis=1)]  # fp32's value where the candidate peaks
            self.peaks_same += list(at_peak >= high - PEAK_TIE * (high - low))

    def summary(self) -> str:
        cos = f"embedding cosine with fp32 >= {min(self.cosines):.4f}"
        if self.cells <= 1:
            return f"{self.precision} maps are 1x1 (no location); {cos}"
        r = np.array(self.correlations)
        return (f"{self.precision} maps of fp32's top-1 class on {len(r)} images: correlation with fp32 median "
                f"{np.median(r):.4f}, 5th percentile {np.percentile(r, 5):.4f}, min {r.min():.4f}; same peak "
                f"cell (up to ties within {PEAK_TIE:g} of the range) in {100 * np.mean(self.peaks_same):.1f}%; {cos}")

    def require(self) -> None:
        """Raise MapVerificationError when the maps or embeddings drift too far from fp32's (MAP_GATES)."""
        gate = MAP_GATES[self.precision]
        if min(self.cosines) < gate["embedding_cosine"]:
            raise MapVerificationError(f"{self.precision} embedding cosine with fp32 is {min(self.cosines):.4f} "
                                       f"at worst, below the required {gate['embedding_cosine']}")
        if self.cells <= 1:
            return
        r, peaks = np.percentile(self.correlations, 5), 100 * np.mean(self.peaks_same)
        if r < gate["correlation_p5"]:
            raise MapVerificationError(f"{self.precision} class activation maps: 5th-percentile correlation with "
                                       f"fp32 is {r:.4f}, below the required {gate['correlation_p5']}")
        if peaks < gate["same_peak"]:
            raise MapVerificationError(f"{self.precision} class activation maps peak on fp32's cell (up to ties) in "
                                       f"{peaks:.1f}% of images, below the required {gate['same_peak']}%")


def candidate_feed(feed: dict, num_classes: int) -> dict:
    """The candidate's feed: every class's map, so fp32's top-1 class is there whatever it ranks."""
    return {**feed, CAM_K_INPUT: np.array([num_classes], dtype=np.int64)}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-30), 1.0)


def _correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r row by row; two flat maps agree (1), a flat map against a shaped one does not (0)."""
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    sa, sb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    flat_a, flat_b = sa <= 1e-12 * (1 + np.abs(a).max(axis=1)), sb <= 1e-12 * (1 + np.abs(b).max(axis=1))
    r = (a * b).sum(axis=1) / np.maximum(sa * sb, 1e-30)
    return np.where(flat_a & flat_b, 1.0, np.where(flat_a | flat_b, 0.0, r))
