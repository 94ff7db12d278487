"""What a model's explanation outputs become in an answer: maps for clients, heatmaps for people, embeddings.

The graph (export.explain) gives, per image, the raw class activation maps of its top k classes
([k, h, w], with cam_classes saying which class each is) and the pooled embedding [C]. This module
turns one class's raw map into:

- a `Heatmap`: the map min-max normalised to [0, 1] (Zhou et al. 2016 show CAMs this way), sent in
  JSON as {"size": [h, w], "values": base64 of h*w uint8 (0..255, row-major), "located": bool}: 49
  bytes for a 7x7 map, 68 characters of base64, where a list of rounded floats would be ~250; 1/255
  steps are finer than any colour map shows. A 1x1 map (a model whose last block is one pixel, as the
  16-pixel default models) or a flat one says nothing about where: it is sent as a constant map of 1
  with "located": false, and a client should not draw it as a location.
- a heatmap overlay PNG of the input image: the map upsampled bilinearly onto the part of the image
  the model saw (the preprocessing's centre crop, artifact.preprocess.crop_box), coloured and blended.

and the embedding into its L2-normalised list (cosine similarity is then a dot product).
Torch-free: numpy and Pillow only, like the rest of the service.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from PIL import Image

from artifact import Preprocessing
from artifact.preprocess import crop_box

ALPHA = 0.5  # weight of the colour map over the image in the overlay
MAX_SIDE = 512  # the overlay PNG's longer side at most, in pixels: for people, not for analysis
# A jet-like colour map (low blue, high red), as piecewise-linear RGB anchors over [0, 1].
_ANCHORS = np.array([0.0, 0.125, 0.375, 0.625, 0.875, 1.0])
_COLOURS = np.array([[0, 0, 128], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0], [128, 0, 0]], dtype=np.float64)


class MapError(ValueError):
    """A map or encoded map that is not what this module makes; the message names the problem."""


@dataclass(frozen=True)
class Heatmap:
    """One class's activation map, normalised to [0, 1]."""

    values: np.ndarray  # [h, w] float32 in [0, 1]; constant 1 when not located
    located: bool  # False for a 1x1 or flat map: the model's evidence has no place in the image

    @property
    def size(self) -> tuple[int, int]:
        return self.values.shape[0], self.values.shape[1]

    def to_json(self) -> dict:
        """{"size": [h, w], "values": base64 of uint8 0..255 row-major, "located": bool}."""
        quantised = np.round(self.values * 255).astype(np.uint8)
        return {"size": list(self.size), "values": base64.b64encode(quantised.tobytes()).decode("ascii"),
                "located": self.located}


def heatmap(cam: np.ndarray) -> Heatmap:
    """A raw [h, w] class activation map, min-max normalised; flat or 1x1 maps are not located."""
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2 or cam.size == 0:
        raise MapError(f"a class activation map is [h, w], got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise MapError("the class activation map holds NaN or infinity")
    low, high = cam.min(), cam.max()
    # Relative flatness: float32 maps of one value still differ in the last bits after the MatMul.
    if cam.size == 1 or high - low <= 1e-6 * max(abs(low), abs(high), 1e-30):
        return Heatmap(np.ones(cam.shape, dtype=np.float32), located=False)
    return Heatmap(((cam - low) / (high - low)).astype(np.float32), located=True)


def class_map(cam: np.ndarray, cam_classes: np.ndarray, class_index: int) -> np.ndarray | None:
    """The raw map of `class_index` among one image's maps ([k, h, w] and their [k] classes); None
    when the graph's top k does not hold it (a tie at the k-th place broken the other way)."""
    where = np.flatnonzero(np.asarray(cam_classes) == class_index)
    return cam[where[0]] if where.size else None


def decode(data: Mapping) -> np.ndarray:
    """The [h, w] float32 values in [0, 1] of a Heatmap.to_json() answer (what a client does)."""
    try:
        h, w = (int(v) for v in data["size"])
        raw = base64.b64decode(data["values"], validate=True)
    except (KeyError, TypeError, ValueError) as error:
        raise MapError(f"not an encoded map: {error}") from error
    if len(raw) != h * w:
        raise MapError(f"an encoded {h}x{w} map holds {h * w} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(h, w).astype(np.float32) / 255


def colourise(values: np.ndarray) -> np.ndarray:
    """[h, w] values in [0, 1] -> [h, w, 3] uint8 RGB through the jet-like colour map."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    rgb = np.stack([np.interp(v, _ANCHORS, _COLOURS[:, c]) for c in range(3)], axis=-1)
    return np.round(rgb).astype(np.uint8)


def overlay(map_: Heatmap, image: Image.Image, prep: Preprocessing | None, alpha: float = ALPHA,
            max_side: int = MAX_SIDE) -> Image.Image:
    """The input image with the map blended over the centre crop the model saw, at most max_side.

    `image` is the decoded upload and `prep` the model's preprocessing, whose crop the map covers;
    outside the crop the model saw nothing, so that part is left as it was but dimmed. With `prep`
    None, `image` is the crop itself (the model's input pixels) and the map covers all of it."""
    if not 0.0 <= alpha <= 1.0:
        raise MapError(f"alpha must be in [0, 1], got {alpha!r}")
    image = image.convert("RGB")
    box = crop_box(image.width, image.height, prep) if prep is not None else (0, 0, image.width, image.height)
    scale = min(1.0, max_side / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    base = np.asarray(image.resize(size, Image.Resampling.BILINEAR) if scale < 1 else image, dtype=np.float64)
    left, top, right, bottom = (round(v * scale) for v in box)
    left, top = max(0, left), max(0, top)
    right, bottom = min(size[0], max(right, left + 1)), min(size[1], max(bottom, top + 1))
    # Upsample the values, not the colours, so the colours stay on the colour map (Zhou et al. upsample bilinearly).
    values = Image.fromarray(map_.values.astype(np.float32)).resize(
        (right - left, bottom - top), Image.Resampling.BILINEAR)
    colour = colourise(np.asarray(values)).astype(np.float64)
    out = base * 0.5
    out[top:bottom, left:right] = (1 - alpha) * base[top:bottom, left:right] + alpha * colour
    return Image.fromarray(np.round(out).astype(np.uint8))


def overlay_png(map_: Heatmap, image: Image.Image, prep: Preprocessing | None, alpha: float = ALPHA,
                max_side: int = MAX_SIDE) -> bytes:
    """overlay() as PNG bytes."""
    buffer = io.BytesIO()
    overlay(map_, image, prep, alpha, max_side).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def embedding(vector: np.ndarray) -> list[float]:
    """The pooled embedding L2-normalised, as a list of floats; an all-zero vector stays zero."""
    v = np.asarray(vector, dtype=np.float64)
    if v.ndim != 1 or not np.isfinite(v).all():
        raise MapError(f"an embedding is a finite [C] vector, got shape {v.shape}")
    norm = np.linalg.norm(v)
    return (v / norm if norm > 0 else v).astype(np.float32).tolist()
