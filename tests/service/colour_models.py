"""Hand-built ONNX models whose every answer is known in advance, for the ladder and cascade tests.

Three classes, red, green and blue: an image's class is its brightest channel. Each model averages
the normalised input per channel and applies a 3x3 linear layer, so its logits for a solid-colour
PNG follow from the colour by arithmetic (`expected_probabilities`):
- the deep model (resnet50 here) reads the channels as they are: always right, and sure once
  one channel clearly leads;
- the shallow model (resnet18) adds a bias towards red: a green or blue image whose red is close
  behind is called red, with low confidence. Clear images it gets right, with high confidence.
So the deeper model is the more accurate one and the shallow one is unsure exactly where it is
wrong: the case a cascade exists for. The files are real ONNX models with the card resnet-export
writes, served by a real resnet-serve.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from artifact import ModelCard, Preprocessing

CLASSES = (("red", "red"), ("green", "green"), ("blue", "blue"))
PREP = Preprocessing(8, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
SHALLOW = ("resnet18", 6.0, (1.5, 0.0, 0.0))  # name, gain, bias: red gets +1.5 logits
DEEP = ("resnet50", 40.0, (0.0, 0.0, 0.0))
CLEAR = {0: (230, 40, 40), 1: (40, 230, 40), 2: (40, 40, 230)}  # every model is right and sure
# Green (or blue) leads red by 10 levels: the shallow model says red at ~0.63, the deep one is right.
AMBIGUOUS = {1: (130, 140, 40), 2: (130, 40, 140)}


def write_model(
    folder: Path, name: str, gain: float, bias, arch: str | None = None, precision: str = "fp32", classes=CLASSES,
    side: int = 8,
) -> Path:
    """folder/<name>/model.onnx: logits = gain * channel means of the normalised input + bias. With
    side > 8 the input is side x side and a 3x3 convolution to 64 channels, whose output is multiplied
    by zero, makes every image cost a known side^2 * 1728 multiply-adds (0.11 G at 256) that ONNX
    Runtime cannot fold away: a slow model whose answers stay the same."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    initializers = [
        numpy_helper.from_array((gain * np.eye(3)).astype(np.float32), "weight"),
        numpy_helper.from_array(np.asarray(bias, dtype=np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["means"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["means", "weight"], ["scaled"]),
    ]
    if side > 8:  # logits = (scaled + features @ 0) + bias
        initializers += [
            numpy_helper.from_array(np.full((64, 3, 3, 3), 0.01, dtype=np.float32), "conv"),
            numpy_helper.from_array(np.zeros((64, 3), dtype=np.float32), "zero"),
        ]
        nodes += [
            helper.make_node("Conv", ["input", "conv"], ["features"], pads=[1, 1, 1, 1]),
            helper.make_node("ReduceMean", ["features"], ["pooled"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "zero"], ["nothing"]),
            helper.make_node("Add", ["scaled", "nothing"], ["scaled_slow"]),
        ]
    nodes.append(helper.make_node("Add", [nodes[-1].output[0], "bias"], ["logits"]))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(
        name=name, arch=arch or name, num_classes=3, class_ids=[c[0] for c in classes],
        class_names=[c[1] for c in classes], preprocessing=Preprocessing(side, side, PREP.mean, PREP.std),
        precision=precision, source_sha256="0" * 64,
        val_top1=None, val_top5=None, torch_version="none", onnx_version=onnx.__version__,
        exported_at="2026-01-01T00:00:00Z",
    )  # fmt: skip
    for key, value in card.to_metadata().items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    path = folder / name / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_ladder(folder: Path) -> Path:
    """A models folder with the shallow and the deep model."""
    for name, gain, bias in (SHALLOW, DEEP):
        write_model(folder, name, gain, bias)
    return folder


def write_cascade_file(folder: Path, thresholds=(0.9,), rungs=("resnet18", "resnet50"), **changes) -> Path:
    """folder/cascade.json as resnet-calibrate writes it (the members the service reads)."""
    from service.depth.cascade_file import file_sha256

    models = {name: {"sha256": file_sha256(folder / name / "model.onnx"), "gflops": 1e-8} for name in rungs}
    data = {"format_version": 1, "ladder": list(rungs), "models": models, "signal": "max_softmax",
            "thresholds": list(thresholds), **changes}  # fmt: skip
    path = folder / "cascade.json"
    path.write_text(json.dumps(data))
    return path


def png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), tuple(colour)).save(buffer, "PNG")
    return buffer.getvalue()


def expected_probabilities(colour, gain: float, bias) -> np.ndarray:
    """What the model computes for a solid-colour image, by arithmetic."""
    means = (np.asarray(colour, dtype=np.float64) / 255 - 0.5) / 0.25
    logits = gain * means + np.asarray(bias)
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def write_image_folder(root: Path, clear: int, ambiguous: int) -> Path:
    """An ImageNet-style labelled folder root/val/<class>/*.png: `clear` images per class and
    `ambiguous` images each of green and blue (the shallow model's mistakes)."""
    for label, colour in CLEAR.items():
        for i in range(clear):
            path = root / "val" / CLASSES[label][0] / f"clear-{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            # vary the colour a little so the images differ; the outcome stays the same
            path.write_bytes(png(tuple(min(255, c + i % 5) for c in colour)))
    for label, colour in AMBIGUOUS.items():
        for i in range(ambiguous):
            path = root / "val" / CLASSES[label][0] / f"ambiguous-{i}.png"
            path.write_bytes(png(tuple(c + (i % 3 if c > 100 else 0) for c in colour)))
    return root


if __name__ == "__main__":
    # python tests/service/colour_models.py DIR [CLEAR AMBIGUOUS [DEEP_SIDE]]: DIR/models and DIR/data,
    # for resnet-calibrate and `resnet-bench scenario cascade` by hand (docs/cascade.md, Measured); DEEP_SIDE > 8 makes
    # the deep model slow (write_model)
    import sys

    root = Path(sys.argv[1])
    clear, ambiguous = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (20, 10)
    write_model(root / "models", *SHALLOW)
    write_model(root / "models", *DEEP, side=int(sys.argv[4]) if len(sys.argv) > 4 else 8)
    write_image_folder(root / "data", clear, ambiguous)
    print(f"wrote {root / 'models'} and {root / 'data'}")
