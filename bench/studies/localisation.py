"""Do the class activation maps point at the object? Measured on the synthetic set's placed variant.

    python -m bench.studies.localisation --out results/localisation [--size 64] [--seed 0] [--steps 2400]

Trains resnet20 (the paper's CIFAR net: its last block keeps a quarter of the input's side, 16x16 at
the default 64 px) on `--data synthetic-placed`,
where each image's object covers at most a quarter of it at a random place, exports it with its
maps, and on held-out images counts how often the peak of the predicted class's map falls inside the
object's box, next to the rate of always guessing the centre. Writes results.json and a PNG of maps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw

from artifact import CAM_CLASSES_OUTPUT, CAM_OUTPUT, ModelCard, write_atomically
from imagesets import synthetic
from service.api import explain

SEED = 7  # the held-out images: another seed than training's, and the val split


def train_and_export(out: Path, steps: int, size: int, lr: float, seed: int = 0) -> Path:
    """resnet-train then resnet-export, as a user runs them; returns the model file."""
    bin_dir = Path(sys.executable).parent
    checkpoint = out / "checkpoint"
    if not (checkpoint / "checkpoint.pt").exists():
        subprocess.run([str(bin_dir / "resnet-train"), "--arch", "resnet20", "--data", "synthetic-placed",
                        "--image-size", str(size), "--batch-size", "64", "--max-steps", str(steps), "--lr", str(lr),
                        "--warmup-steps", "30", "--lr-schedule", "cosine", "--zero-init-residual", "--workers", "0",
                        "--val-size", "500", "--seed", str(seed), "--out", str(checkpoint)], check=True)  # fmt: skip
    models = out / "models"
    if not (models / "resnet20" / "model.onnx").exists():
        subprocess.run([str(bin_dir / "resnet-export"), str(checkpoint / "checkpoint.pt"), "--out", str(models)],
                       check=True)  # fmt: skip
    return models / "resnet20" / "model.onnx"


def inside(box, x: float, y: float) -> bool:
    x0, y0, x1, y1 = box
    return x0 <= x < x1 and y0 <= y < y1


def measure(model: Path, images: int) -> tuple[dict, list]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    card = ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)
    prep = card.preprocessing
    render, side = prep.resize_size, prep.input_size
    offset = int(round((render - side) / 2.0))  # the centre crop of a render-sized image, as torchvision's
    hits = centre = correct = hits_when_correct = near = seen = 0
    examples = []
    for index in range(images):
        pixels, label, box = synthetic.render_placed(SEED, "val", index, render)
        crop = pixels[offset:offset + side, offset:offset + side]
        outputs = dict(zip([o.name for o in session.get_outputs()],
                           session.run(None, {card.input_name: crop[None]})))  # fmt: skip
        predicted = int(outputs[card.output_name][0].argmax())
        raw = explain.class_map(outputs[CAM_OUTPUT][0], outputs[CAM_CLASSES_OUTPUT][0], predicted)
        h, w = raw.shape
        row, col = np.unravel_index(int(raw.argmax()), raw.shape)
        x, y = offset + (col + 0.5) * side / w, offset + (row + 0.5) * side / h  # the peak cell's centre
        hit = inside(box, x, y)
        hits += hit
        cell_w, cell_h = side / w, side / h  # a miss by less than a cell: the map's resolution, not its aim
        near += inside((box[0] - cell_w, box[1] - cell_h, box[2] + cell_w, box[3] + cell_h), x, y)
        # The peak a person sees: the map resized to the crop as cam_png's overlay resizes it (bilinear).
        big = np.asarray(Image.fromarray(raw.astype(np.float32)).resize((side, side), Image.Resampling.BILINEAR))
        row_px, col_px = np.unravel_index(int(big.argmax()), big.shape)
        seen += inside(box, offset + col_px + 0.5, offset + row_px + 0.5)
        centre += inside(box, render / 2, render / 2)
        correct += predicted == label
        hits_when_correct += hit and predicted == label
        if len(examples) < 8:
            examples.append((crop, raw, box, offset, hit))
    result = {
        "images": images, "map_size": [h, w], "input_size": side, "rendered_at": render,
        "top1": round(correct / images, 4),
        "peak_in_box": round(hits / images, 4),
        "peak_in_box_when_correct": round(hits_when_correct / max(correct, 1), 4),
        "peak_within_a_cell_of_box": round(near / images, 4),
        "upsampled_peak_in_box": round(seen / images, 4),
        "centre_guess_in_box": round(centre / images, 4),
    }  # fmt: skip
    return result, examples


def picture(examples: list, path: Path) -> None:
    """The first held-out images with their predicted class's map over them and the object's box."""
    tiles = []
    for crop, raw, box, offset, hit in examples:
        heat = explain.heatmap(raw)
        big = Image.fromarray(crop).resize((128, 128), Image.Resampling.NEAREST)  # 32 px is too small to see
        tile = explain.overlay(heat, big, None, max_side=128).convert("RGB")
        scale = tile.size[0] / crop.shape[1]
        x0, y0, x1, y1 = ((v - offset) * scale for v in box)
        colour = (255, 255, 255) if hit else (255, 0, 0)  # white: the peak fell inside the box
        ImageDraw.Draw(tile).rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=2)
        tiles.append(tile)
    sheet = Image.new("RGB", (sum(t.size[0] for t in tiles) + 4 * len(tiles), tiles[0].size[1]), "white")
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.size[0] + 4
    write_atomically(path, lambda f: sheet.save(f, format="PNG"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.localisation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the checkpoint, the model and results.json")
    parser.add_argument("--steps", type=int, default=2400, help="training steps of batch 64 (default 2400)")
    parser.add_argument("--size", type=int, default=64, help="input size: resnet20 keeps size/4 cells per side (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="resnet-train's seed: weights, data order, images (default 0)")
    parser.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default 0.05)")
    parser.add_argument("--images", type=int, default=1000, help="held-out images to measure (default 1000)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = train_and_export(args.out, args.steps, args.size, args.lr, args.seed)
    result, examples = measure(model, args.images)
    result["command"] = "python -m bench.studies.localisation " + " ".join(sys.argv[1:] if argv is None else argv)
    write_atomically(args.out / "results.json", lambda f: f.write(json.dumps(result, indent=1).encode()))
    picture(examples, args.out / "maps.png")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
