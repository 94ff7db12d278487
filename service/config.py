"""The service's settings: one frozen dataclass, set by flags and by RESNET_SERVE_<FIELD> variables.

Every field is settable both ways, and this module is the one place that maps them: `--max-batch-size 8`
and `RESNET_SERVE_MAX_BATCH_SIZE=8` set `ServeConfig.max_batch_size`; a flag beats the environment,
the environment beats the default. Each field's `help` is its comment (unit and meaning) and the flag's
help text. The deploy manifests (deploy/) use these variable names: keep them stable.

    resnet-serve --help
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Mapping, Sequence

ENV_PREFIX = "RESNET_SERVE_"
PROVIDER_NAMES = ("cuda", "cpu")  # runtime.PROVIDERS maps these to ONNX Runtime's names


class ConfigError(ValueError):
    """A flag or environment variable holds a value the service cannot use; the message names it."""


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:  # Kubernetes CPU limits show up here, not in the affinity mask
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one resnet-serve process; see each field's help for its unit."""

    models: Path = field(metadata={"help": "folder written by resnet-export: one NAME/model.onnx per model"})
    host: str = _opt("127.0.0.1", "interface to listen on")
    port: int = _opt(8000, "TCP port to listen on")
    default_model: str = _opt("resnet18", "model used when a request names none")
    # Batching defaults are a first measurement on the 2-core dev box (README, section Serving), kept
    # by resnet-bench on an idle box (README, section Performance): fp32 raw ORT gains under 10% from
    # batch 1 to 8 on 224x224 resnet18/152, and batches are full (8.00) at concurrency >= 16.
    max_batch_size: int = _opt(8, "most images in one inference")
    max_delay_ms: float = _opt(2.0, "longest wait, in ms after the first queued image, for a batch to fill")
    queue_size: int = _opt(128, "most images admitted per model (decoding, queued or running) before 503")
    max_body_bytes: int = _opt(20_000_000, "largest request body, in bytes (413 beyond)")
    max_pixels: int = _opt(50_000_000, "largest image, in pixels (width x height), read from its header (413 beyond)")
    max_images: int = _opt(32, "most images in one multipart upload (413 beyond)")
    # 0 shares the cores out between the models (runtime.model_threads; issue 12, docs/robustness.md).
    intra_op_threads: int = _opt(0, "ONNX Runtime threads per model; 0 = the available CPUs divided among the models")
    decode_threads: int = _opt(0, "threads decoding and preprocessing images; 0 = one per available CPU")
    request_timeout_s: float = _opt(30.0, "deadline of a request from arrival, in seconds (504 beyond)")
    providers: tuple[str, ...] = _opt(
        ("cuda", "cpu"), "ONNX Runtime providers in order of preference, comma-separated: cuda, cpu", sep=","
    )
    warmup_runs: int = _opt(2, "inferences per model and batch shape before /health/ready reports ready")
    drain_timeout_s: float = _opt(30.0, "on SIGTERM, seconds to let in-flight requests finish")
    # Client timeouts and the read budget (issue 12, docs/robustness.md): uvicorn has no header or
    # body read timeout of its own, so service/server.py adds them.
    header_timeout_s: float = _opt(
        10.0, "seconds to send a request's headers, from connect or the last response (connection closed beyond)"
    )
    body_timeout_s: float = _opt(20.0, "seconds a request may take to send its whole body (408 and closed beyond)")
    keep_alive_timeout_s: float = _opt(5.0, "seconds an idle keep-alive connection stays open between requests")
    read_budget_bytes: int = _opt(
        200_000_000, "most bytes of request bodies being read or held at once, all requests together (503 beyond)"
    )
    log_level: str = _opt("info", "debug, info, warning or error")

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", Path(self.models))
        positive = (
            "max_batch_size", "queue_size", "max_body_bytes", "max_pixels", "max_images", "warmup_runs",
            "read_budget_bytes",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("intra_op_threads", "decode_threads", "max_delay_ms", "drain_timeout_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("request_timeout_s", "header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        # Limits that could never all be met: such an upload would get 503 and Retry-After forever.
        if self.max_images > self.queue_size:
            raise ConfigError(f"max_images ({self.max_images}) must not exceed queue_size ({self.queue_size})")
        if self.max_body_bytes > self.read_budget_bytes:
            raise ConfigError(
                f"max_body_bytes ({self.max_body_bytes}) must not exceed read_budget_bytes ({self.read_budget_bytes})"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port!r}")
        if not self.providers or any(p not in PROVIDER_NAMES for p in self.providers):
            raise ConfigError(f"providers must be a list of {PROVIDER_NAMES}, got {','.join(self.providers)!r}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        if self.decode_threads == 0:
            object.__setattr__(self, "decode_threads", available_cpus())

    @property
    def max_delay_s(self) -> float:
        return self.max_delay_ms / 1000.0


def _converter(f):
    """The str -> value function for a field, from its declared type."""
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind.startswith("tuple"):
        return lambda text: tuple(part.strip().lower() for part in text.split(f.metadata["sep"]) if part.strip())
    return {"Path": Path, "str": str, "int": int, "float": float}[kind]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ServeConfig:
    """Build the config from flags (argv) over environment variables (environ) over defaults."""
    environ = os.environ if environ is None else environ
    parser = _Parser(prog="resnet-serve", description="Serve exported ResNet ONNX models over HTTP.")
    for f in fields(ServeConfig):
        env = ENV_PREFIX + f.name.upper()
        default = "" if f.default is MISSING else f" (default {_show(f.default)})"
        parser.add_argument(
            _flag(f.name), dest=f.name, metavar=f.name.upper(), help=f"{f.metadata['help']}; env {env}{default}"
        )
    args = vars(parser.parse_args(argv))
    values = {}
    for f in fields(ServeConfig):
        env = ENV_PREFIX + f.name.upper()
        raw, source = (args[f.name], _flag(f.name)) if args[f.name] is not None else (environ.get(env), env)
        if raw is None:
            continue
        try:
            values[f.name] = _converter(f)(raw)
        except ValueError:
            raise ConfigError(f"{source} must be {_describe(f)}, got {raw!r}") from None
    if "models" not in values:
        raise ConfigError(f"the models folder is required: --models DIR or {ENV_PREFIX}MODELS")
    return ServeConfig(**values)


def _show(value) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


def _describe(f) -> str:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    return {"int": "an integer", "float": "a number"}.get(kind, "text")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line, as every CLI here does."""

    def error(self, message: str):
        raise ConfigError(message)
