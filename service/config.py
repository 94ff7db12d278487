"""The service's settings: one frozen dataclass, set by flags and by RESNET_SERVE_<FIELD> variables.

Every field is settable both ways, and cliconfig.Parser maps them (`parser()` below): `--max-batch-size 8`
and `RESNET_SERVE_MAX_BATCH_SIZE=8` set `ServeConfig.max_batch_size`; a flag beats the environment,
the environment beats the default. Each field's `help` is its comment (unit and meaning) and the flag's
help text. The deploy manifests (deploy/) use these variable names: keep them stable.

    resnet-serve --help
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import cliconfig

ENV_PREFIX = "RESNET_SERVE_"
PROVIDER_NAMES = ("cuda", "cpu")  # runtime.PROVIDERS maps these to ONNX Runtime's names
CONV_ALGO_SEARCH = ("exhaustive", "heuristic", "default")  # ORT's EXHAUSTIVE, HEURISTIC, DEFAULT
ARENA_STRATEGIES = ("same_as_requested", "next_power_of_two")  # engine/cuda.py maps them to ORT's
CPU_MAX_BATCH = 8  # max_batch_size's default on the CPU (the comment at the field says why)
CPU_QUEUE, CUDA_QUEUE_BATCHES = 128, 8  # queue_size's defaults (the comment at the field says why)
# An origin as browsers send it (RFC 6454 section 6.1); Litestar's CORSConfig reads * in it as a wildcard.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9*.-]+)(:[0-9]{1,5})?")


class ConfigError(cliconfig.UsageError):
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
    """A field with its help text: the flag's help, the variable's meaning (cliconfig.option)."""
    return cliconfig.option(default, help, **extra)


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one resnet-serve process; see each field's help for its unit."""

    models: Path = field(metadata={"help": "folder written by resnet-export: one NAME/model.onnx per model"})
    host: str = _opt("127.0.0.1", "interface to listen on")
    port: int = _opt(8000, "TCP port to listen on")
    default_model: str = _opt("", "model used when a request names none; empty = the ladder's shallowest rung")
    ladder: tuple[str, ...] = _opt(
        (), "the depth ladder's models, comma-separated; empty = each depth's fastest variant (docs/cascade.md)",
        sep=",",
    )
    # Batching defaults: on the CPU, kept by resnet-bench on an idle box (docs/performance.md): fp32 raw ORT
    # gains under 10% from batch 1 to 8 on 224x224 resnet18/152, and batches are full (8.00) at concurrency
    # >= 16. On CUDA the GPU's rate still grows to batch 64-128 (docs/gpu.md), so the largest size there.
    max_batch_size: int | None = _opt(
        None, f"most images in one inference; default {CPU_MAX_BATCH} on the CPU, the largest --cuda-batch-sizes on CUDA"
    )
    max_delay_ms: float = _opt(2.0, "longest wait, in ms after the first queued image, for a batch to fill")
    # A queue holds a few batches: 16 of the CPU's, 8 of the largest CUDA batch (about 50 ms of resnet18
    # fp16 on an H200, docs/gpu.md, with room for clients that send many images in one request).
    queue_size: int | None = _opt(
        None,
        f"most images admitted per model (decoding, queued or running) before 503; default {CPU_QUEUE} on the "
        f"CPU, {CUDA_QUEUE_BATCHES} times the largest --cuda-batch-sizes on CUDA",
    )
    max_body_bytes: int = _opt(20_000_000, "largest request body, in bytes (413 beyond)")
    max_pixels: int = _opt(50_000_000, "largest image, in pixels (width x height), read from its header (413 beyond)")
    max_images: int = _opt(32, "most images in one multipart upload (413 beyond)")
    # 0 gives every model every core (engine/runtime.model_threads says why).
    intra_op_threads: int = _opt(0, "ONNX Runtime threads per model instance; 0 = the available CPUs shared by its instances")
    # Triton's instance_group count: 1 keeps a lone request on every core; 2 served more at load on
    # the 2-core box (docs/performance-per-image.md).
    instances: int = _opt(1, "batches of one model that run at once, each on its own thread (1 on CUDA)")
    decode_threads: int = _opt(0, "threads decoding and preprocessing images; 0 = one per available CPU")
    request_timeout_s: float = _opt(30.0, "deadline of a request from arrival, in seconds (504 beyond)")
    abstain: bool = _opt(False, "say for every answer whether it is below its model's calibrated confidence (abstain=true asks per request)")
    providers: tuple[str, ...] = _opt(
        ("cuda", "cpu"), "ONNX Runtime providers in order of preference, comma-separated: cuda, cpu", sep=","
    )
    cuda_device_id: int = _opt(0, "GPU (CUDA device id) the CUDA provider runs on; see CUDA_VISIBLE_DEVICES")
    # heuristic: measured on an H200 (docs/gpu.md), the service under load ran 1.9x faster than with
    # exhaustive, whose per-shape state ONNX Runtime rebuilds whenever the batch size changes.
    cudnn_conv_algo_search: str = _opt(
        "heuristic", "cuDNN convolution algorithm choice on CUDA: heuristic, exhaustive (benchmark once per shape) or default"
    )
    cuda_arena_extend_strategy: str = _opt(
        "same_as_requested", "how the CUDA memory arena grows: same_as_requested or next_power_of_two"
    )
    # One session per size on CUDA: ONNX Runtime's cuDNN-frontend Conv keeps the execution plan of the
    # last input shape only (microsoft/onnxruntime#23006), so a session that sees one shape never
    # rebuilds it. Below 8 a batch costs about the same at any size; above, the sizes double, so padding
    # at most doubles a batch's work (docs/gpu.md: on an H200 a batch of 64 took 5.1 ms padded to 128, 3.3 at 64).
    cuda_batch_sizes: tuple[int, ...] = _opt(
        (1, 8, 16, 32, 64, 128),
        "batch sizes the CUDA path runs, increasing, the largest >= max_batch_size; a batch is zero-padded to the next",
        sep=",",
    )
    cuda_sessions: str = _opt(
        "per_size", "per_size: one ONNX Runtime session per batch size (fixed shape); shared: one session for all sizes"
    )
    cuda_graphs: bool = _opt(False, "capture one CUDA graph per batch size and replay it (falls back with a warning)")
    # Tensor cores read channels-last: on an H200 resnet18 ran 1.36-1.53x (fp16), 1.29x (fp32) faster (docs/gpu.md).
    cuda_prefer_nhwc: bool = _opt(True, "run convolutions channels-last on CUDA (ONNX Runtime's prefer_nhwc)")
    # For tests and measurements: the CUDA path's sized sessions and buffers on the CPU provider too.
    sized_on_cpu: bool = _opt(False, "run the CUDA path's sized sessions and buffers on the CPU provider as well")
    warmup_runs: int = _opt(2, "inferences per model and batch shape before /health/ready reports ready")
    drain_timeout_s: float = _opt(30.0, "on SIGTERM, seconds to let in-flight requests finish")
    drain_grace_s: float = _opt(
        2.0, "on SIGTERM, seconds an idle connection may still send a request (503 draining), at most header_timeout_s"
    )
    # Client timeouts and the read budget (docs/robustness.md): uvicorn has no header or
    # body read timeout of its own, so service/api/server.py adds them.
    header_timeout_s: float = _opt(
        10.0, "seconds to send a request's headers, from connect or the last response (connection closed beyond)"
    )
    body_timeout_s: float = _opt(20.0, "seconds a request may take to send its whole body (408 and closed beyond)")
    keep_alive_timeout_s: float = _opt(5.0, "seconds an idle keep-alive connection stays open between requests")
    read_budget_bytes: int = _opt(
        200_000_000, "most bytes of request bodies being read or held at once, all requests together (503 beyond)"
    )
    log_level: str = _opt("info", "debug, info, warning or error")
    # The page is same-origin and needs no CORS; --no-ui leaves a production service its API alone.
    ui: bool = _opt(True, "serve the page at / that classifies images in a browser; --no-ui: / answers 404")
    cors_origins: tuple[str, ...] = _opt(
        (), "origins whose pages may call the API from a browser, comma-separated (https://app.example.com), "
        "or *; empty = none (CORS off)", sep=",",
    )  # fmt: skip
    # Who may call (service/gate/keys.py, service/gate/access.py, docs/serving.md#api-keys): off by default.
    api_keys_file: str = _opt(
        "", "file of NAME KEY lines; with it, /models, classify and /v2 model routes need Authorization: Bearer KEY; "
        "empty = no keys"
    )
    metrics_need_key: bool = _opt(False, "with api_keys_file, GET /metrics needs a key too")
    rate_limit_rps: float = _opt(
        0.0, "requests per second each key (without keys: each client address) may make; 0 = no limit (429 beyond)"
    )
    rate_limit_burst: int = _opt(20, "requests a key or address may make at once before rate_limit_rps applies")

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", Path(self.models))
        object.__setattr__(self, "providers", tuple(p.lower() for p in self.providers))
        positive = (
            "max_batch_size", "queue_size", "max_body_bytes", "max_pixels", "max_images", "warmup_runs",
            "read_budget_bytes", "instances", "rate_limit_burst",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("intra_op_threads", "decode_threads", "max_delay_ms", "drain_timeout_s", "drain_grace_s",
                     "rate_limit_rps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("request_timeout_s", "header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        # Limits that could never all be met: such an upload would get 503 and Retry-After forever.
        if self.max_images > (self.queue_size or CPU_QUEUE):  # the CPU default is the smaller one
            raise ConfigError(f"max_images ({self.max_images}) must not exceed queue_size ({self.queue_size or CPU_QUEUE})")
        if self.max_body_bytes > self.read_budget_bytes:
            raise ConfigError(
                f"max_body_bytes ({self.max_body_bytes}) must not exceed read_budget_bytes ({self.read_budget_bytes})"
            )
        if not math.isfinite(self.rate_limit_rps):
            raise ConfigError(f"rate_limit_rps must be a finite number, got {self.rate_limit_rps!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port!r}")
        if not self.providers or any(p not in PROVIDER_NAMES for p in self.providers):
            raise ConfigError(f"providers must be a list of {PROVIDER_NAMES}, got {','.join(self.providers)!r}")
        if self.cuda_device_id < 0:
            raise ConfigError(f"cuda_device_id must be >= 0, got {self.cuda_device_id!r}")
        if self.cudnn_conv_algo_search not in CONV_ALGO_SEARCH:
            raise ConfigError(
                f"cudnn_conv_algo_search must be exhaustive, heuristic or default, got {self.cudnn_conv_algo_search!r}"
            )
        if self.cuda_arena_extend_strategy not in ARENA_STRATEGIES:
            raise ConfigError(
                "cuda_arena_extend_strategy must be same_as_requested or next_power_of_two, "
                f"got {self.cuda_arena_extend_strategy!r}"
            )
        self._check_batch_sizes()
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        for origin in self.cors_origins:  # the Origin header is scheme://host[:port]; a path never matches it
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ConfigError(
                    f"cors_origins must be * or origins like https://app.example.com:8443 (no path, no trailing "
                    f"slash), got {origin!r}"
                )
        if self.decode_threads == 0:
            object.__setattr__(self, "decode_threads", available_cpus())

    def _check_batch_sizes(self) -> None:
        """The one place the CUDA path's batch sizes are checked (service/engine/sized.py relies on it)."""
        sizes = self.cuda_batch_sizes
        if not sizes or any(size < 1 for size in sizes):
            raise ConfigError(f"cuda_batch_sizes must be batch sizes >= 1, got {','.join(map(str, sizes))!r}")
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise ConfigError(f"cuda_batch_sizes must be strictly increasing, got {','.join(map(str, sizes))!r}")
        if self.cuda_sessions not in ("per_size", "shared"):
            raise ConfigError(f"cuda_sessions must be per_size or shared, got {self.cuda_sessions!r}")
        # Only where the sized path can run: a CPU-only service with a large max_batch_size is not refused.
        if ("cuda" in self.providers or self.sized_on_cpu) and sizes[-1] < (self.max_batch_size or 0):
            raise ConfigError(
                f"cuda_batch_sizes' largest size ({sizes[-1]}) is below max_batch_size ({self.max_batch_size}): "
                f"add a size >= {self.max_batch_size} or lower max_batch_size"
            )

    def batch_limit(self, device: str) -> int:
        """max_batch_size as given, or its default for a model ONNX Runtime runs on `device`
        ("cuda": the largest of cuda_batch_sizes; "cpu": CPU_MAX_BATCH)."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        return self.cuda_batch_sizes[-1] if device == "cuda" else CPU_MAX_BATCH

    def queue_limit(self, device: str) -> int:
        """queue_size as given, or its default for a model ONNX Runtime runs on `device`."""
        if self.queue_size is not None:
            return self.queue_size
        return CUDA_QUEUE_BATCHES * self.cuda_batch_sizes[-1] if device == "cuda" else CPU_QUEUE

    @property
    def max_delay_s(self) -> float:
        return self.max_delay_ms / 1000.0


def parser() -> cliconfig.Parser:
    """The flags of resnet-serve, one per ServeConfig field, each with its RESNET_SERVE_* variable."""
    return cliconfig.Parser(ServeConfig, prog="resnet-serve", description="Serve exported ResNet ONNX models over HTTP.",
                            env_prefix=ENV_PREFIX, error=ConfigError)


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ServeConfig:
    """Build the config from flags (argv) over environment variables (environ) over defaults."""
    return ServeConfig(**parser().parse(argv, os.environ if environ is None else environ))
