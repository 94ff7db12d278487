"""Is folding the normalisation into the first convolution exact, and what do the explicit nodes cost?

    python -m export.fold_check CHECKPOINT [MODEL.onnx] [PHOTO ...]

1. Builds the checkpoint's network behind export.graph.PixelInput (Cast, Sub, Mul, then the stem
   convolution) and a copy with mean and std folded into the stem's weights and bias, runs both on
   the photos' uint8 crops and prints the largest logit difference against the parity tolerance.
   The fold cannot be exact at the borders: the stem zero-pads the *normalised* image, i.e. pads
   with the pixel value 255 * mean, while the folded convolution pads raw pixels with 0.
2. With a 224x224 (or any) exported model file: times, in ONNX Runtime on one thread (CPU time), a
   graph holding only the normalisation nodes against the whole model, per image at batch 8.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from artifact import ModelCard, Preprocessing
from export.config import PARITY_TOLERANCE
from export.graph import PixelInput
from artifact import preprocess
from training import checkpoint, models



def folded_stem(network: torch.nn.Module, pre: Preprocessing) -> torch.nn.Module:
    """A copy whose first convolution takes raw [0, 255] pixels: W' = W s, b' = b - sum(W s 255 mean)."""
    net = copy.deepcopy(network)
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    scale = 1.0 / (255.0 * torch.tensor(pre.std))
    offset = 255.0 * torch.tensor(pre.mean)
    with torch.no_grad():
        weight = conv.weight * scale.reshape(1, 3, 1, 1)
        bias = -(weight * offset.reshape(1, 3, 1, 1)).sum(dim=(1, 2, 3))
        conv.weight.copy_(weight)
        if conv.bias is None:
            conv.bias = torch.nn.Parameter(bias)
        else:
            conv.bias.add_(bias)
    return net


def fold_error(path: Path, photos: list[Path]) -> None:
    payload = checkpoint.load(path)
    net = models.build(payload["arch"], payload["num_classes"], shortcut=payload.get("shortcut"))
    net.load_state_dict(payload["model"])
    pre = Preprocessing.from_dict({**payload["preprocessing"], "input_dtype": "uint8", "layout": "NCHW"})
    pixels = np.stack([preprocess.prepare(p.read_bytes(), pre, 10**9) for p in photos])
    x = torch.from_numpy(pixels)
    with torch.no_grad():
        exact = PixelInput(net.eval(), pre).eval()(x)
        folded = folded_stem(net.eval(), pre)(x.float())
    diff, scale = float((exact - folded).abs().max()), float(exact.abs().max())
    same = bool((exact.argmax(1) == folded.argmax(1)).all())
    print(f"{payload['arch']} at {pre.input_size} px on {len(photos)} photos: folded stem max |logit diff| "
          f"{diff:.3g} = {diff / scale:.2e} of max |logit| (parity tolerance {PARITY_TOLERANCE:g}); same top-1: {same}")


def prefix_cost(model_path: Path, batch: int = 8, seconds: float = 3.0) -> None:
    card = ModelCard.from_metadata(
        ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map)
    pre = card.preprocessing
    if pre.input_dtype != "uint8":
        print(f"{model_path}: a {pre.input_dtype} model normalises outside the graph; nothing to time")
        return
    shape = list(pre.input_shape(batch))
    perm = [0, 3, 1, 2] if pre.layout == "NHWC" else [0, 1, 2, 3]
    const = lambda name, values: helper.make_tensor(name, TensorProto.FLOAT, [1, 3, 1, 1], values)  # noqa: E731
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=perm), helper.make_node("Cast", ["t"], ["c"], to=1),
             helper.make_node("Sub", ["c", "offset"], ["s"]), helper.make_node("Mul", ["s", "scale"], ["y"])]
    graph = helper.make_graph(nodes, "normalise", [helper.make_tensor_value_info("x", TensorProto.UINT8, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [const("offset", [255 * m for m in pre.mean]), const("scale", [1 / (255 * s) for s in pre.std])])
    prefix = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    x = preprocess.random_batch(pre, batch)
    for name, source in (("normalisation nodes", prefix.SerializeToString()), ("whole model", str(model_path))):
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        session.run(None, feed)
        times = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 3:
            # CPU time of this thread (ORT runs in it with one intra-op thread): on a shared box the
            # wall clock would mostly time the wait for a core.
            started = time.thread_time()
            session.run(None, feed)
            times.append(time.thread_time() - started)
        print(f"{model_path.parent.name} {name}: {np.median(times) / batch * 1e3:.3f} CPU ms per image "
              f"(median of {len(times)} runs at batch {batch}, one thread)")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    args = [Path(a) for a in sys.argv[2:]]
    model = next((a for a in args if a.suffix == ".onnx"), None)
    photos = [a for a in args if a.suffix != ".onnx"]
    fold_error(Path(sys.argv[1]), photos)
    if model is not None:
        prefix_cost(model)
