"""Per-image cost of the service's preprocessing, before and after issue 16, on one thread.

    python -m bench.prepare_cost results/payloads          # the payload JPEGs resnet-bench writes

For each payload kind (bench.payloads), interleaved over `--repeats` passes so that other load on
the machine weighs on both alike, the median CPU milliseconds (this thread's) of:
- decode: artifact.preprocess.decode (JPEG draft to twice the resize size, EXIF, RGB), shared by both;
- before: the pre-issue-16 rest: full Resize, CenterCrop, float32 ToTensor + Normalize, CHW copy;
- after: the rest today for a uint8 model: one cropped resample, the uint8 HWC pixels;
- prepare: the whole artifact.preprocess.prepare for a uint8 model, as the decode pool runs it;
- entropy floor: the same JPEG decoded at 1/8 scale in the DCT domain (Pillow's draft, the
  smallest libjpeg-turbo offers): the Huffman decoding of every byte and almost nothing else. No
  decode of that file at any scale can cost less, so it bounds what any cheaper resize can win.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from artifact import Preprocessing
from bench.payloads import KINDS
from artifact import preprocess

IMAGENET = Preprocessing.for_input_size(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
MAX_PIXELS = 50_000_000


def before_rest(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """artifact.preprocess.to_input as it was before issue 16 (commit 649375d)."""
    width, height = preprocess.resized_size(*image.size, prep.resize_size)
    if (width, height) != image.size:
        image = image.resize((width, height), preprocess.RESAMPLING[prep.interpolation])
    side = prep.input_size
    top, left = int(round((height - side) / 2.0)), int(round((width - side) / 2.0))
    image = image.crop((left, top, left + side, top + side))
    scale = 1.0 / (255.0 * np.asarray(prep.std, dtype=np.float32))
    offset = np.asarray(prep.mean, dtype=np.float32) / np.asarray(prep.std, dtype=np.float32)
    pixels = np.asarray(image, dtype=np.float32)
    pixels *= scale
    pixels -= offset
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _ms(function, *args) -> float:
    # This thread's CPU time, not wall time: on a shared box the wall clock mostly measures waiting
    # for a core (at load average ~17 on 2 cores, 60 s of wall for 3 s of CPU), the CPU time the work.
    started = time.thread_time()
    function(*args)
    return (time.thread_time() - started) * 1e3


def entropy_floor(body: bytes) -> None:
    image = Image.open(io.BytesIO(body))
    image.draft("RGB", (1, 1))  # libjpeg-turbo's smallest scale, 1/8
    image.load()


def measure(files: list[Path], repeats: int) -> dict[str, float]:
    """Median milliseconds per image of each stage over the files, `repeats` interleaved passes."""
    pixels = replace(IMAGENET, input_dtype="uint8", layout="NHWC")
    bodies = [f.read_bytes() for f in files]
    times: dict[str, list[float]] = {"decode": [], "before": [], "after": [], "prepare": [], "floor": []}
    for index in range(repeats + 1):
        for body in bodies:
            image = preprocess.decode(body, MAX_PIXELS, preprocess.DRAFT_HEADROOM * IMAGENET.resize_size)
            sample = {"decode": _ms(preprocess.decode, body, MAX_PIXELS, preprocess.DRAFT_HEADROOM * IMAGENET.resize_size),
                      "before": _ms(before_rest, image, IMAGENET), "after": _ms(preprocess.to_input, image, pixels),
                      "prepare": _ms(preprocess.prepare, body, pixels, MAX_PIXELS), "floor": _ms(entropy_floor, body)}
            if index:  # the first pass warms caches and Pillow's lazy imports
                for key, value in sample.items():
                    times[key].append(value)
    return {key: round(statistics.median(values), 3) for key, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prepare_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("payloads", type=Path, help="folder of <kind>-<n>.jpg files (python -m bench.payloads)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    print("| payload | decode ms | before: rest ms | before: prepare ms | after: rest ms | after: prepare ms "
          "| entropy floor ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind in KINDS:
        files = sorted(args.payloads.glob(f"{kind}-*.jpg"))
        if not files:
            continue
        t = measure(files, args.repeats if kind == "photo" else max(3, args.repeats // 5))
        print(f"| {kind} | {t['decode']:.2f} | {t['before']:.2f} | {t['decode'] + t['before']:.2f} | "
              f"{t['after']:.2f} | {t['prepare']:.2f} | {t['floor']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
