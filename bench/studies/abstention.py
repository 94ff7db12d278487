"""How often the served models abstain on real photographs that none of their classes describe.

    python -m bench.studies.abstention --models models [--out results/abstention.json]

Runs each photograph of scikit-image's bundled data (real photos: an astronaut, a cat, a rocket,
coins, the moon, ...; none is a shape or texture of the synthetic set) through every model of the
cascade file's ladder exactly as the service prepares it, and reports, at each model's calibrated
threshold (MODELS/cascade.json, `resnet-calibrate --target-risk`), which photos it abstains on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from artifact import preprocess, write_atomically
from bench import photos
from service.config import ServeConfig
from service.depth import abstain, cascade_file, ladder as ladders
from service.engine.runtime import load_models

# The real photographs among scikit-image's data (the rest are charts, textures, text and scans).
PHOTOGRAPHS = (
    "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "hubble_deep_field.jpg",
    "moon.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg", "ihc.png",
)  # fmt: skip


def run(models_dir: Path) -> dict:
    """Per model: its threshold, and each photograph's confidence, top class and verdict."""
    models = load_models(ServeConfig(models=models_dir, providers=("cpu",), decode_threads=1))
    ladder = ladders.build(models)
    policy = cascade_file.read(models_dir, ladder, models)
    folder, result = photos.folder(), {}
    for name in ladder.rungs:
        model, rule = models[name], policy.abstain.get(name)
        rows = []
        for photo in PHOTOGRAPHS:
            pixels = preprocess.prepare((folder / photo).read_bytes(), model.card.preprocessing, 50_000_000)
            p = model.probabilities(pixels[None])[0]
            verdict = abstain.judge(p, rule)
            rows.append({"photo": photo, "top1": model.card.class_names[int(p.argmax())],
                         "confidence": round(float(p.max()), 4), "abstained": verdict.abstained})  # fmt: skip
        result[name] = {"threshold": None if rule is None else rule.threshold,
                        "target_risk": None if rule is None else rule.target_risk,
                        "abstained": sum(r["abstained"] for r in rows), "photos": rows}  # fmt: skip
    return result


def table(result: dict) -> str:
    lines = ["| model | threshold (target risk) | photographs abstained | their confidences |", "|---|---|---|---|"]
    for name, r in result.items():
        rule = "uncalibrated" if r["threshold"] is None else f"{r['threshold']:.4f} ({r['target_risk']:.0%})"
        confidences = ", ".join(f"{p['confidence']:.2f}" for p in r["photos"])
        lines.append(f"| {name} | {rule} | {r['abstained']} of {len(r['photos'])} | {confidences} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.abstention", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="a models folder with its cascade.json")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    result = run(args.models)
    print(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.out, lambda f: f.write(json.dumps(result, indent=1).encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
