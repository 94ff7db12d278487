"""resnet-bench's settings: one frozen dataclass, and the one table that maps flags onto it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

from bench.payloads import KINDS


class BenchError(ValueError):
    """A setting or target the bench cannot use; the message names it and what was expected."""


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run; the defaults are the issue's (concurrency 1/4/16/64, both payloads)."""

    models: Path | None = None  # folder written by resnet-export; None: the bench's own 224x224 models
    url: str | None = None  # a running service to measure; None: start resnet-serve on `models`
    out: Path = Path("results")  # results folder: results.json, results.png, table.txt, models/, payloads/
    only: tuple[str, ...] = ()  # served model names to measure; (): every model in the folder
    payloads: tuple[str, ...] = KINDS  # which request bodies (bench.payloads.KINDS)
    concurrency: tuple[int, ...] = (1, 4, 16, 64)  # closed-loop connections, one level after another
    warmup_s: float = 3.0  # seconds of load before each level's measured window
    duration_s: float = 10.0  # seconds of each level's measured window
    raw_seconds: float = 3.0  # seconds of raw ONNX Runtime timing per batch size
    baseline: bool = True  # also measure the PyTorch eager baseline (fp32 models only)
    baseline_concurrency: tuple[int, ...] = (1, 4)  # levels for the baseline, which serves one at a time
    serve_args: tuple[str, ...] = ()  # extra resnet-serve flags, e.g. ("--max-batch-size", "16")
    rounds: int = 0  # 0: the full sweep; N: issue 16's service-vs-raw-ORT measurement, N rounds (bench.ratio)

    def __post_init__(self) -> None:
        for name in ("concurrency", "baseline_concurrency"):
            values = getattr(self, name)
            if not values or any(c < 1 for c in values):
                raise BenchError(f"{name} must be positive integers, got {','.join(map(str, values)) or 'none'}")
        if not self.payloads or set(self.payloads) - set(KINDS):
            raise BenchError(f"payloads must be some of {','.join(KINDS)}, got {','.join(self.payloads) or 'none'}")
        for name in ("warmup_s", "duration_s", "raw_seconds"):
            if not getattr(self, name) > 0:
                raise BenchError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if not isinstance(self.rounds, int) or self.rounds < 0:
            raise BenchError(f"rounds must be an int >= 0, got {self.rounds!r}")
        if self.url is not None and not self.url.startswith("http://"):
            raise BenchError(f"--url must be an http:// URL of a running resnet-serve, got {self.url!r}")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# flag -> (BenchConfig field, parser, help). The one place where flags map onto the config.
FLAGS = {
    "--models": ("models", Path, "models folder written by resnet-export (default: build 224x224 resnet18/152 "
                 "fp32+int8 with random weights into OUT/models, speed only)"),
    "--url": ("url", str, "measure a running service at this URL instead of starting one (raw ORT and "
              "decode figures still come from --models on this machine)"),
    "--out": ("out", Path, "results folder (default results)"),
    "--only": ("only", _names, "comma-separated model names to measure (default: all)"),
    "--payloads": ("payloads", _names, f"comma-separated, some of {','.join(KINDS)} (default all)"),
    "--concurrency": ("concurrency", _ints, "comma-separated connection counts (default 1,4,16,64)"),
    "--warmup-s": ("warmup_s", float, "seconds of unmeasured load before each level (default 3)"),
    "--duration-s": ("duration_s", float, "seconds measured per level (default 10)"),
    "--raw-seconds": ("raw_seconds", float, "seconds of raw ONNX Runtime timing per batch size (default 3)"),
    "--baseline-concurrency": ("baseline_concurrency", _ints, "levels for the PyTorch eager baseline (default 1,4)"),
    "--rounds": ("rounds", int, "instead of the sweep: N rounds of raw ONNX Runtime (default options, best batch "
                 "1..32) interleaved with the service at concurrency 8 (or the one --concurrency level) on the "
                 "photo payload; medians of rounds (bench/ratio.py)"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as every CLI here
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse(argv: Sequence[str] | None = None) -> BenchConfig:
    """Flags -> BenchConfig. Arguments after `--` go to resnet-serve unchanged."""
    argv = list(argv or [])
    serve_args: list[str] = []
    if "--" in argv:
        argv, serve_args = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = _Parser(prog="resnet-bench", description="Measure resnet-serve against raw ONNX Runtime and "
                     "a PyTorch eager baseline.", epilog="resnet-bench [flags] -- [resnet-serve flags]",
                     argument_default=argparse.SUPPRESS)
    for flag, (name, kind, text) in FLAGS.items():
        parser.add_argument(flag, dest=name, type=kind, help=text)
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the PyTorch eager baseline")
    values = vars(parser.parse_args(argv))
    known = {f.name for f in fields(BenchConfig)}
    assert set(values) <= known, set(values) - known
    return BenchConfig(**values, serve_args=tuple(serve_args))
