"""resnet-calibrate: measure the depth cascade's whole curve and choose model=auto's thresholds.

    resnet-calibrate --models models --data synthetic          # the default models (make models)
    resnet-calibrate --models models --data /data/imagenet     # its val/<wnid>/*.JPEG, published weights

For each confidence signal (max_softmax, margin, entropy; service/depth/cascade.py) and each threshold it
measures the escalation rate, the cascade's top-1 and top-5 and the mean GFLOPs per image, beside
each single model's point. The images (4000 by default: half a point of 500 images is only 2.5
images) are split at random into a calibration half, on which the signal and threshold are chosen
(the cheapest whose top-1 is within --max-accuracy-drop points of the best single model's), and a
held-out half, on which the choice is reported, so over-fitting shows.

The models run exactly as the service runs them: the service's preprocessing (artifact/preprocess.py
`prepare`) and ONNX Runtime sessions (service/engine/runtime.py), one threshold for every rung but the last.
For abstention it also chooses, per model, the confidence threshold that keeps the error rate of
the answers given at --target-risk on the calibration half (service/depth/abstain.py).
It writes MODELS/cascade.json (read by resnet-serve at start-up, service/depth/cascade_file.py),
MODELS/cascade.png (accuracy against mean GFLOPs) and MODELS/abstention.png (risk against coverage). GFLOPs are counted from the ONNX graph as
torchvision counts them (multiply-adds of Conv, Gemm and MatMul: resnet18 1.81, resnet152 11.5 at
224 px); that needs the `onnx` package. `--data synthetic` renders with imagesets/synthetic.py, the
synthetic set's torch-free renderer.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from artifact import preprocess, write_atomically
from imagesets import synthetic
from service.depth import abstain, calibration_report as report, cascade_file, ladder as ladders
from service.depth.cascade import SIGNALS
from service.config import ServeConfig
from service.engine.runtime import LoadedModel, ModelLoadError, load_models


class CalibrationError(ValueError):
    """Input the calibrator cannot use; the message names it."""


def gflops(path: Path) -> float:
    """Multiply-adds per image, in billions, of Conv, Gemm and MatMul nodes (torchvision's "GFLOPS")."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    for node in model.graph.input:  # batch 1, so shape inference gives every size
        dims = node.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    graph = shape_inference.infer_shapes(model).graph
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    for info in [*graph.value_info, *graph.input, *graph.output]:
        shapes[info.name] = [d.dim_value for d in info.type.tensor_type.shape.dim]
    macs = 0
    for node in graph.node:
        op = node.op_type
        weight_index = 3 if op == "QLinearConv" else 1
        if op in ("Conv", "QLinearConv", "ConvInteger"):
            out, weight = shapes.get(node.output[0]), shapes.get(node.input[weight_index])
            if out and weight:
                macs += int(np.prod(out[1:])) * int(np.prod(weight[1:]))
        elif op in ("Gemm", "MatMul", "QLinearMatMul", "MatMulInteger"):
            out, a = shapes.get(node.output[0]), shapes.get(node.input[0])
            if out and a:
                macs += int(np.prod(out)) * a[-1]
    return macs / 1e9


def synthetic_images(count: int, size: int, class_ids: tuple[str, ...], seed: int) -> tuple[list[bytes], np.ndarray]:
    """The synthetic set's val split (never trained on), rendered at `size` and PNG-encoded."""
    ids = list(synthetic.CLASS_IDS)
    if list(class_ids) != ids:
        raise CalibrationError(f"--data synthetic has classes {ids[:3]}..., the ladder's have {class_ids[:3]}...")
    payloads, labels = [], []
    for index in range(count):
        pixels, label = synthetic.render(seed, "val", index, size)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, "PNG")
        payloads.append(buffer.getvalue())
        labels.append(label)
    return payloads, np.asarray(labels)


def folder_images(root: Path, count: int, class_ids: tuple[str, ...], seed: int) -> tuple[list[bytes], np.ndarray]:
    """Up to `count` images of an ImageNet-style folder (root/val/<class id>/*, or root/<class id>/*)."""
    root = root / "val" if (root / "val").is_dir() else root
    if not root.is_dir():
        raise CalibrationError(f"--data {str(root)!r} is not 'synthetic' or a folder")
    index = {class_id: i for i, class_id in enumerate(class_ids)}
    files = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in index:
            raise CalibrationError(f"{str(folder)!r}: {folder.name!r} is not one of the models' class ids")
        files.extend((path, index[folder.name]) for path in sorted(folder.iterdir()) if path.is_file())
    if not files:
        raise CalibrationError(f"{str(root)!r} holds no <class id>/<image> files")
    order = np.random.default_rng(seed).permutation(len(files))[:count]
    return [files[i][0].read_bytes() for i in order], np.asarray([files[i][1] for i in order])


def probabilities(model: LoadedModel, payloads: list[bytes], max_pixels: int, batch: int = 64) -> np.ndarray:
    """[N, classes]: each image through the service's own preprocessing and ONNX Runtime session."""
    prep, rows = model.card.preprocessing, []
    for start in range(0, len(payloads), batch):
        arrays = [preprocess.prepare(data, prep, max_pixels) for data in payloads[start : start + batch]]
        rows.append(model.probabilities(np.stack(arrays)))
    return np.concatenate(rows)


def evaluate(probs: list[np.ndarray], labels: np.ndarray, costs: list[float], signal: str, threshold: float) -> dict:
    """The cascade at one threshold: every rung but the last answers when its confidence >= threshold."""
    answered = np.full(len(labels), len(probs) - 1)
    undecided = np.ones(len(labels), dtype=bool)
    for rung, p in enumerate(probs[:-1]):
        stops = undecided & (SIGNALS[signal](p) >= threshold)
        answered[stops], undecided = rung, undecided & ~stops
    final = np.stack(probs)[answered, np.arange(len(labels))]
    top5 = np.argsort(-final, axis=1)[:, :5]
    shares = [float(np.mean(answered == r)) for r in range(len(probs))]
    reached = [float(np.mean(answered >= r)) for r in range(len(probs))]
    return {
        "threshold": float(threshold),
        "escalation_rate": round(reached[1] if len(probs) > 1 else 0.0, 5),
        "share_per_rung": [round(s, 5) for s in shares],
        "top1": round(100 * float(np.mean(final.argmax(axis=1) == labels)), 3),
        "top5": round(100 * float(np.mean((top5 == labels[:, None]).any(axis=1))), 3),
        "gflops": _significant(sum(c * r for c, r in zip(costs, reached))),
    }


def _significant(value: float) -> float:
    return float(f"{value:.6g}")  # tiny test models cost 1e-8 GFLOPs: keep digits, not decimals


def thresholds_for(probs: list[np.ndarray], signal: str) -> np.ndarray:
    """A grid over the first rung's confidences (201 quantiles) plus the two ends: none and all escalate."""
    values = SIGNALS[signal](probs[0])
    return np.unique(np.concatenate([[0.0, 1.0 + 1e-6], np.quantile(values, np.linspace(0, 1, 201))]))


def single(p: np.ndarray, labels: np.ndarray, cost: float) -> dict:
    top5 = np.argsort(-p, axis=1)[:, :5]
    top1 = round(100 * float(np.mean(p.argmax(axis=1) == labels)), 3)
    return {"top1": top1, "top5": round(100 * float(np.mean((top5 == labels[:, None]).any(axis=1))), 3),
            "gflops": _significant(cost)}  # fmt: skip


def split(count: int, seed: int) -> dict[str, np.ndarray]:
    """The two halves every choice is made on and reported on: indices into the measured images."""
    order = np.random.default_rng(seed).permutation(count)
    return {"calibration": order[: count // 2], "held_out": order[count // 2 :]}


def abstention(probs: list[np.ndarray], labels: np.ndarray, names, target_risk: float, seed: int) -> dict:
    """Per model: the threshold chosen on the calibration half for `target_risk`, its coverage and
    risk on both halves, and the held-out risk-coverage curve (for the plot)."""
    halves = split(len(labels), seed)
    result = {}
    for name, p in zip(names, probs):
        calibration, held_out = (p[halves["calibration"]], labels[halves["calibration"]]), (
            p[halves["held_out"]], labels[halves["held_out"]])  # fmt: skip
        threshold = abstain.choose(*calibration, target_risk)
        thresholds, coverage, risk = abstain.risk_coverage(*held_out)
        keep = np.unique(np.linspace(0, len(thresholds) - 1, min(len(thresholds), 101)).round().astype(int))
        result[name] = {
            "signal": abstain.SIGNAL, "threshold": threshold, "target_risk": target_risk,
            "calibration": abstain.at(*calibration, threshold), "held_out": abstain.at(*held_out, threshold),
            "curve": {"threshold": [float(t) for t in thresholds[keep]],
                      "coverage": [round(float(c), 5) for c in coverage[keep]],
                      "risk": [round(float(r), 5) for r in risk[keep]]},
        }  # fmt: skip
    return result


def calibrate(probs: list[np.ndarray], labels: np.ndarray, costs: list[float], names, drop: float, seed: int) -> dict:
    """Split, choose on the calibration half, report both halves; the cascade file's measured part."""
    halves = split(len(labels), seed)
    parts = {h: ([p[idx] for p in probs], labels[idx]) for h, idx in halves.items()}
    singles = {h: {n: single(p, y, c) for n, p, c in zip(names, ps, costs)} for h, (ps, y) in parts.items()}
    curves = {
        signal: {h: [evaluate(ps, y, costs, signal, t) for t in thresholds_for(parts["calibration"][0], signal)]
                 for h, (ps, y) in parts.items()}
        for signal in SIGNALS
    }  # fmt: skip
    best = max(s["top1"] for s in singles["calibration"].values())
    candidates = [
        (point["gflops"], -point["top1"], list(SIGNALS).index(signal), i)
        for signal, curve in curves.items()
        for i, point in enumerate(curve["calibration"])
        if point["top1"] >= best - drop
    ]
    if not candidates:  # a middle rung is best and no shared threshold reaches it: take the most accurate
        candidates = [
            (-p["top1"], p["gflops"], list(SIGNALS).index(s), i)
            for s, c in curves.items()
            for i, p in enumerate(c["calibration"])
        ]
    _, _, signal, i = min(candidates)
    signal = list(SIGNALS)[signal]
    chosen = {h: curves[signal][h][i] for h in halves}
    return {"signal": signal, "threshold": chosen["calibration"]["threshold"], "chosen": chosen,
            "best_single_top1": best, "singles": singles, "curves": curves,
            "split": {h: len(idx) for h, idx in halves.items()}}  # fmt: skip


def run(argv: list[str] | None = None) -> dict:
    """Parse flags, measure, write MODELS/cascade.json and MODELS/cascade.png; returns the file's data."""
    parser = _Parser(prog="resnet-calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="the served models folder (resnet-export --out)")
    parser.add_argument("--data", default="synthetic", help="'synthetic' or an ImageNet-style folder (its val/)")
    parser.add_argument("--images", type=int, default=4000, help="images to measure, split in halves (default 4000)")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.5, help="top-1 points below the best single model")
    parser.add_argument("--ladder", default="", help="as resnet-serve --ladder (default: its default ladder)")
    parser.add_argument("--seed", type=int, default=0, help="which images and which split")
    parser.add_argument("--target-risk", type=float, default=abstain.DEFAULT_TARGET_RISK,
                        help="abstention: the error rate of the answers given, 0..1 (default 0.05)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.images < 2 or args.max_accuracy_drop < 0:
        raise CalibrationError(
            f"need --images >= 2 and --max-accuracy-drop >= 0, got {args.images} and {args.max_accuracy_drop}"
        )
    if not 0 <= args.target_risk < 1:
        raise CalibrationError(f"--target-risk must be in [0, 1), got {args.target_risk}")
    config = ServeConfig(models=args.models, providers=("cpu",), decode_threads=1)
    models = load_models(config)
    names = tuple(n.strip() for n in args.ladder.split(",") if n.strip())
    ladder = ladders.build(models, names)
    rungs = [models[name] for name in ladder.rungs]
    card = rungs[0].card
    if args.data == "synthetic":
        payloads, labels = synthetic_images(args.images, card.preprocessing.resize_size, card.class_ids, args.seed)
    else:
        payloads, labels = folder_images(Path(args.data), args.images, card.class_ids, args.seed)
    costs = [gflops(model.path) for model in rungs]
    probs = [probabilities(model, payloads, config.max_pixels) for model in rungs]
    result = calibrate(probs, labels, costs, ladder.rungs, args.max_accuracy_drop, args.seed)
    rules = abstention(probs, labels, ladder.rungs, args.target_risk, args.seed)
    data = {
        "format_version": cascade_file.FORMAT_VERSION,
        "ladder": list(ladder.rungs),
        "models": {m.name: {"sha256": cascade_file.file_sha256(m.path), "depth": m.card.depth,
                            "precision": m.card.precision, "gflops": _significant(c)} for m, c in zip(rungs, costs)},
        "signal": result["signal"],
        "thresholds": [result["threshold"]] * (len(rungs) - 1),
        "max_accuracy_drop": args.max_accuracy_drop,
        "abstain": rules,
        "data": {"source": args.data, "images": len(labels), **result.pop("split")},
        "command": "resnet-calibrate " + " ".join(sys.argv[1:] if argv is None else argv),
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **result,
    }  # fmt: skip
    text = json.dumps(data, indent=1).encode()
    write_atomically(args.models / cascade_file.FILENAME, lambda f: f.write(text))
    report.plot(result, ladder.rungs, args.models / "cascade.png")
    report.plot_abstention(rules, args.models / "abstention.png")
    print(report.table(result, ladder.rungs))
    print(report.abstention_table(rules))
    print(f"wrote {args.models / cascade_file.FILENAME}, {args.models / 'cascade.png'} and {args.models / 'abstention.png'}")
    return data


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise CalibrationError(message)


def main(argv: list[str] | None = None) -> int:
    """The command: one line on stderr and exit 2 for input it cannot use."""
    try:
        run(argv)
    except (CalibrationError, ModelLoadError, ladders.LadderError, preprocess.ImageError, OSError) as error:
        print(f"resnet-calibrate: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
