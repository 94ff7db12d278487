"""Fine-tuning against training from scratch, on a small folder of real photographs (docs/finetuning.md).

    OMP_NUM_THREADS=1 python -m bench.studies.finetune --out results/finetune --image-size 16 --steps 90 --source-steps 150
    python -m bench.studies.finetune --write-photos data/photos       # only write the photo folder, then exit

The folder: five real photographs that scikit-image bundles (skimage.data: astronaut, chelsea the
cat, coffee, rocket, the left stereo motorcycle) are the five classes. Each class gets random square
crops (a quarter to a half of the photo's shorter side, flipped at random) resized to 48 px: the
train images come from the left 60% of the photo, the val images from the right 40%, so no val
pixel was ever seen in training. This is a toy task (which photo is this patch from?) with real
image statistics, small enough for two shared cores; it says nothing about ImageNet accuracy.

The starts, each trained on that folder for the same number of steps with the same schedule:
  synthetic-*  --init-from a resnet18 trained here on the synthetic set (this script trains it
               once), with the whole-net phase at lr / 10, lr / 2 (the default) or lr
  stand-in     --init-from resnet18:IMAGENET1K_V1, where the "published" file in a temporary
               TORCH_HOME is a *randomly initialised* torchvision resnet18 saved under the exact
               file name torchvision expects: it exercises the download/cache path, not ImageNet features
  scratch      no --init-from: the same network from random init
Fine-tuning's head phase is cheaper per step (no backward through the backbone), so at equal
steps from-scratch gets at least as much compute; the wall seconds are printed next to each run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

# name in the folder -> skimage.data loader of a real photograph bundled with scikit-image
PHOTOS = {
    "astronaut": lambda d: d.astronaut(),
    "cat": lambda d: d.chelsea(),
    "coffee": lambda d: d.coffee(),
    "motorcycle": lambda d: d.stereo_motorcycle()[0],
    "rocket": lambda d: d.rocket(),
}
STARTS = ("synthetic-tenth-lr", "synthetic-half-lr", "synthetic-same-lr", "stand-in", "scratch")  # see main
TRAIN_SHARE = 0.6  # train crops from the left 60% of each photo, val crops from the right 40%


def photo_folder(root: str | os.PathLike, train_per_class: int = 120, val_per_class: int = 40, size: int = 48,
                 seed: int = 0, classes: tuple[str, ...] = tuple(PHOTOS)) -> Path:
    """Write root/{train,val}/<class>/<i>.png: crops of scikit-image's bundled photographs (see above)."""
    import skimage.data

    rng = np.random.default_rng(seed)
    root = Path(root)
    for name in classes:
        photo = PHOTOS[name](skimage.data)
        height, width = photo.shape[:2]
        split_at = int(width * TRAIN_SHARE)
        for split, count, (left, right) in (("train", train_per_class, (0, split_at)),
                                            ("val", val_per_class, (split_at, width))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                side = int(rng.uniform(0.25, 0.5) * min(height, width))
                side = min(side, right - left)
                x = int(rng.integers(left, right - side + 1))
                y = int(rng.integers(0, height - side + 1))
                crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
                crop.save(folder / f"{i}.png")
    return root


def stand_in_weights(torch_home: Path, seed: int = 1) -> Path:
    """A random torchvision resnet18 saved where torchvision looks for IMAGENET1K_V1 (a stand-in)."""
    import torch
    import torchvision

    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    path = torch_home / "hub" / "checkpoints" / Path(weights.url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def _train(argv: list[str]) -> tuple[dict, float]:
    """One resnet-train run in this process; (its checkpoint's metrics, wall seconds)."""
    from training import checkpoint, cli

    start = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        status = cli.main(argv)
    seconds = time.monotonic() - start
    if status != 0:
        raise SystemExit(f"resnet-train {' '.join(argv)} failed with status {status}")
    out = argv[argv.index("--out") + 1]
    return checkpoint.load(Path(out) / "checkpoint.pt")["metrics"], seconds


def checkpoint_metrics(run: Path) -> dict:
    from training import checkpoint

    return checkpoint.load(run / "checkpoint.pt")["metrics"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/finetune", help="folder for the runs, results.json and table.md")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the fine-tuning runs")
    parser.add_argument("--steps", type=int, default=180, help="optimizer steps of every run on the photos")
    parser.add_argument("--source-steps", type=int, default=200, help="steps of the synthetic-set source model")
    parser.add_argument("--image-size", type=int, default=32, help="network input side in pixels")
    parser.add_argument("--starts", default="synthetic-tenth-lr,synthetic-half-lr,synthetic-same-lr,stand-in,scratch",
                        help="comma-separated starts to run (default: all five)")
    parser.add_argument("--write-photos", metavar="DIR", help="only write the photo folder into DIR and exit")
    args = parser.parse_args(argv)
    if args.write_photos:
        print(photo_folder(args.write_photos))
        return 0
    chosen = [s for s in args.starts.split(",") if s]
    unknown = sorted(set(chosen) - set(STARTS))
    if unknown:
        parser.error(f"unknown --starts {unknown}; expected some of {list(STARTS)}")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    photos = photo_folder(out / "photos") if not (out / "photos").is_dir() else out / "photos"
    torch_home = out / "torch-home"
    stand_in_weights(torch_home)
    os.environ["TORCH_HOME"] = str(torch_home)  # read by torch.hub.get_dir() at each call

    size = ["--image-size", str(args.image_size)]
    source_run = out / "source-synthetic"
    source_argv = [
        "--arch", "resnet18", "--data", "synthetic", *size, "--batch-size", "32", "--train-size", "6400",
        "--val-size", "300", "--max-steps", str(args.source_steps), "--lr", "0.1", "--zero-init-residual",
        "--lr-schedule", "cosine", "--workers", "0", "--log-every", "1000", "--seed", "0", "--out", str(source_run)]
    if (source_run / "checkpoint.pt").is_file():  # a finished source from an earlier call: reused
        source_metrics, source_seconds = checkpoint_metrics(source_run), None
    else:
        source_metrics, source_seconds = _train(source_argv)
    took = "reused" if source_seconds is None else f"{source_seconds:.0f} s"
    print(f"source: resnet18 on the synthetic set, {args.source_steps} steps, val top-1 "
          f"{source_metrics['val_top1']:.1f}% ({took})", file=sys.stderr)

    # The head's lr is 0.1 x 32 / 256 = 0.0125 in every run; the whole-net phase's is explicit, so that
    # the table stays what it says when the default changes (lr / 10 when the first rows were taken).
    source = ["--init-from", str(source_run / "checkpoint.pt")]
    starts = {"synthetic-tenth-lr": [*source, "--finetune-lr", "0.00125"],
              "synthetic-half-lr": [*source, "--finetune-lr", "0.00625"],  # the default, lr / 2
              "synthetic-same-lr": [*source, "--finetune-lr", "0.0125"],
              "stand-in": ["--init-from", "resnet18:IMAGENET1K_V1", "--finetune-lr", "0.00125"],
              "scratch": ["--arch", "resnet18"]}
    assert tuple(starts) == STARTS, "STARTS lists these names for --starts"
    starts = {name: flags for name, flags in starts.items() if name in chosen}
    runs = []
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        for start, flags in starts.items():
            run_out = out / f"{start}-seed{seed}"
            argv_run = [*flags, "--data", str(photos), *size, "--batch-size", "32", "--max-steps", str(args.steps),
                        "--lr-schedule", "cosine", "--workers", "0", "--log-every", "1000", "--seed", str(seed),
                        "--out", str(run_out)]
            metrics, seconds = _train(argv_run)
            runs.append({"start": start, "seed": seed, "val_top1": metrics["val_top1"], "seconds": seconds,
                         "command": "resnet-train " + " ".join(argv_run)})
            print(f"{start} seed {seed}: val top-1 {metrics['val_top1']:.1f}% ({seconds:.0f} s)", file=sys.stderr)

    lines = ["| start | val top-1 per seed (%) | mean ± sd (%) | wall s per run (mean) |", "|---|---|---|---|"]
    for start in starts:
        mine = [r for r in runs if r["start"] == start]
        accs = [r["val_top1"] for r in mine]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {start} | {', '.join(f'{a:.1f}' for a in accs)} | {statistics.mean(accs):.1f} ± {spread:.1f} "
                     f"| {statistics.mean(r['seconds'] for r in mine):.0f} |")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"source": {"val_top1": source_metrics["val_top1"],
                                                             "seconds": source_seconds},
                                                  "args": vars(args), "runs": runs}, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
