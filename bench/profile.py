"""Where resnet-serve's CPU goes under load: py-spy samples of the server, grouped by stage.

    resnet-serve --models results/models --port 8000 &
    python -m bench.load --url http://127.0.0.1:8000 --path '/classify?model=resnet18-int8' \
        --payload results/payloads/photo-0.jpg --concurrency 8 --warmup-s 2 --duration-s 40 &
    python -m bench.profile --pid $(pgrep -f 'resnet-serve --models results/models') --seconds 20

py-spy (in the dev venv) samples every thread of the process, with native frames so that time inside
Pillow's and ONNX Runtime's C code counts. Samples of waiting threads (WAITING) are set apart; every
other sample goes to the first stage (in the order below) whose pattern appears in its stack, and the
table gives each stage's share of the working samples, i.e. of the CPU the server used.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

# Frames of a thread that waits (a pool worker on its queue, the loop in epoll, ORT's idle workers, a
# thread waiting for the GIL): py-spy's native mode reports these as active, so they are set apart.
WAITING = ("pthread_cond_timedwait", "pthread_cond_wait", "epoll_wait", "sem_wait", "sem_clockwait", "futex",
           "take_gil", "select (selectors.py", "nanosleep", "_queue_SimpleQueue_get", "PyThread_acquire_lock")
# stage -> substrings of frame names ("function (file)"), first match wins, in this order.
STAGES = {
    "inference (ONNX Runtime)": ("onnxruntime", "InferenceSession", "_infer", "probabilities", "libmlas", "mlas"),
    "JPEG decode": ("decode (service/preprocess.py", "ImageFile.py", "load (PIL", "jpeg", "draft"),
    "resize + crop": ("crop_resized", "resize (PIL", "ImagingResample", "resample"),
    "pixels to numpy, normalise": ("to_input", "__array_interface__", "tobytes"),
    "batch stack": ("stack (numpy", "_stack", "np.stack"),
    "HTTP + event loop": ("asyncio", "uvicorn", "litestar", "h11", "httptools", "msgspec", "uvloop", "selectors"),
}


def classify(stack: str) -> str:
    if any(w in stack for w in WAITING):
        return "waiting"
    for stage, patterns in STAGES.items():
        if any(p in stack for p in patterns):
            return stage
    return "other"


def breakdown(collapsed: str) -> dict[str, int]:
    """Samples per stage from py-spy's `--format raw` output (one 'frame;frame;... count' per line)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[classify(stack)] += int(count)
    return dict(counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pid", type=int, required=True, help="the resnet-serve process")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.raw or Path(tmp) / "stacks.txt"
        command = ["py-spy", "record", "--pid", str(args.pid), "--duration", str(args.seconds), "--rate",
                   str(args.rate), "--format", "raw", "--native", "--output", str(out)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"py-spy failed: {done.stderr.strip()[-500:]}", file=sys.stderr)
            return 2
        counts = breakdown(out.read_text())
    waiting = counts.pop("waiting", 0)
    total = sum(counts.values()) or 1
    print(f"| stage | share of the server's working samples ({total} working, {waiting} waiting, {args.seconds} s) |")
    print("| --- | --- |")
    for stage in [*STAGES, "other"]:
        if stage in counts:
            print(f"| {stage} | {100 * counts[stage] / total:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
