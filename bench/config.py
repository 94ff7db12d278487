"""resnet-bench's settings: one frozen dataclass; cliconfig maps flags onto it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cliconfig
from bench.payloads import DEFAULT_KINDS, DESCRIPTIONS, KINDS

# RFC 9110 5.1 and 5.5: a header name is a token; a value holds no line break.
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[ \t]*[^\r\n]*")
# Headers each request already carries from the bench itself: a second copy would garble it.
OWN_HEADERS = ("host", "content-length", "content-type", "transfer-encoding", "connection",
               "inference-header-content-length")


class BenchError(cliconfig.UsageError):
    """A setting or target the bench cannot use; the message names it and what was expected."""


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run; the defaults are the full sweep of docs/performance.md."""

    models: Path | None = None  # folder written by resnet-export; None: the bench's own 224x224 models
    url: str | None = None  # a running service to measure; None: start resnet-serve on `models`
    out: Path = Path("results")  # results folder: results.json, results.png, table.md, models/, payloads/
    only: tuple[str, ...] = ()  # served model names to measure; (): every model in the folder
    payloads: tuple[str, ...] = DEFAULT_KINDS  # which request bodies (listed under payloads: below)
    concurrency: tuple[int, ...] = (1, 4, 16, 64)  # closed-loop connections, one level after another
    warmup_s: float = 3.0  # seconds of load before each level's measured window
    duration_s: float = 10.0  # seconds of each level's measured window
    raw_seconds: float = 3.0  # seconds of raw ONNX Runtime timing per batch size
    baseline: bool = True  # also measure the PyTorch eager baseline (fp32 models only)
    baseline_concurrency: tuple[int, ...] = (1, 4)  # levels for the baseline, which serves one at a time
    serve_args: tuple[str, ...] = ()  # extra resnet-serve flags, e.g. ("--max-batch-size", "16")
    headers: tuple[str, ...] = ()  # "Name: value" HTTP headers on every request the bench sends (--header)
    rounds: int = 0  # 0: the full sweep; N: the service against raw ORT at modest load, N rounds (bench.ratio)

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
        check_headers(self.headers)


def check_headers(headers: Sequence[str]) -> None:
    """Raise BenchError for a --header that is not 'Name: value' or sets what the bench sets itself."""
    for header in headers:
        if not _HEADER.fullmatch(header):
            raise BenchError(f"--header must be 'Name: value' (a token, a colon, no line break), got {header!r}")
        if header.split(":", 1)[0].lower() in OWN_HEADERS:
            raise BenchError(f"--header cannot set {header.split(':', 1)[0]}: the bench sets it on each request")


def redacted(argv: list[str]) -> list[str]:
    """argv with each --header's value hidden: results files keep the header names, not an API key."""
    out = list(argv)
    for index, arg in enumerate(out):
        if arg == "--header" and index + 1 < len(out):
            out[index + 1] = out[index + 1].split(":", 1)[0] + ": ***"
        elif arg.startswith("--header="):
            out[index] = arg.split(":", 1)[0] + ": ***"
    return out


def parse(argv: Sequence[str] | None = None) -> BenchConfig:
    """Flags -> BenchConfig, one flag per field (its comment is the help). Arguments after `--` go to
    resnet-serve unchanged."""
    argv = list(argv or [])
    serve_args: list[str] = []
    if "--" in argv:
        argv, serve_args = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = cliconfig.Parser(BenchConfig, prog="resnet-bench", description="Measure resnet-serve against raw ONNX "
                              "Runtime and a PyTorch eager baseline.", epilog=_EPILOG,
                              skip=("serve_args", "headers"), error=BenchError)
    parser.add_argument("--header", action="append", dest="headers", metavar="'NAME: VALUE'",
                        help="an HTTP header on every request the bench sends, e.g. an API key (repeatable)")
    values = parser.parse(argv)
    return BenchConfig(**{**values, "headers": tuple(values.get("headers", ()))}, serve_args=tuple(serve_args))


_EPILOG = "payloads:\n" + "".join(f"  {kind:8} {DESCRIPTIONS[kind]}\n" for kind in KINDS) + \
    "\nresnet-bench [flags] -- [resnet-serve flags]"
