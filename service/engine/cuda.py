"""The CUDA side of the runtime: is a GPU usable, the CUDA provider's options, and I/O-bound runs.

ONNX Runtime asked for its CUDA provider on a machine without an NVIDIA driver prints red errors
about libcuda.so.1 for every session and then falls back to the CPU silently. So the driver is asked
first, through the CUDA driver API (libcuda.so.1: cuInit, cuDeviceGetCount), and CUDA is requested
only where it can work; the CPU user sees one clear line instead.

The provider options follow ONNX Runtime's CUDA provider documentation for a serving process:
  - device_id: the GPU this process serves on (one process per GPU; Kubernetes sets
    CUDA_VISIBLE_DEVICES, so 0 is usually right);
  - arena_extend_strategy kSameAsRequested: the arena grows by what a batch needs, not by powers of
    two, so a large batch does not reserve twice its memory for the process's life (kNextPowerOfTwo
    measured no faster on an H200: docs/gpu.md);
  - cudnn_conv_algo_search HEURISTIC (ORT's default is EXHAUSTIVE): measured on an H200
    (docs/gpu.md), the service under load answered 1.9x more images per second with HEURISTIC, and
    raw throughput at a fixed batch size was no lower. ORT's Conv keeps the state of the last input
    shape only, and a batcher changes the shape from batch to batch. Either way each new shape costs
    a first run, so on CUDA batches are padded up to a fixed ladder of sizes (BATCH_LADDER), every
    rung of which is warmed up before the service reports ready;
  - cudnn_conv_use_max_workspace 1: lets cuDNN pick algorithms that need a large workspace (the
    documented speed-up for convolution networks);
  - do_copy_in_default_stream 1: the documented safe default; ORT runs each session on a compute
    stream of its own, and copies in the default stream are ordered before it.

I/O binding (BoundRunner): the batch is copied to a device buffer once, the graph runs on it, and
the result is copied back once; buffers are kept per batch size so a steady load allocates nothing.
The input's element type is read from the session, so the same code serves float32, float16 or
uint8 inputs. Each run records the three times (copy in, compute, copy out) for /metrics.
"""

from __future__ import annotations

import ctypes
import functools
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

CUDA_PROVIDER = "CUDAExecutionProvider"
CONV_ALGO_SEARCH = ("exhaustive", "heuristic", "default")  # ORT: EXHAUSTIVE, HEURISTIC, DEFAULT
# Batch sizes a CUDA session runs: a batch is padded up to the next rung (padding costs little on a
# GPU, a cuDNN search for a new shape costs seconds). Warm-up runs each rung up to max_batch_size.
BATCH_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Which exported precision of one network to serve on each device, best first: float16 convolutions
# run on a GPU's tensor cores, while ONNX Runtime's CPU provider computes an fp16 graph in float32.
PRECISION_PREFERENCE = {"cuda": ("fp16", "fp32"), "cpu": ("fp32", "fp16")}
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


@dataclass(frozen=True)
class GpuProbe:
    """What the CUDA driver says: how many GPUs this process sees, or why none can be used."""

    devices: int
    reason: str  # empty when devices > 0

    @property
    def usable(self) -> bool:
        return self.devices > 0


@functools.cache
def probe() -> GpuProbe:
    """Ask the NVIDIA driver (libcuda.so.1) for its devices, once per process, without ONNX Runtime."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return GpuProbe(0, "no NVIDIA driver (libcuda.so.1 not found)")
    status = driver.cuInit(0)
    if status != 0:  # 100 = CUDA_ERROR_NO_DEVICE, e.g. CUDA_VISIBLE_DEVICES="" or no GPU in the container
        return GpuProbe(0, f"the NVIDIA driver found no usable GPU (cuInit error {status})")
    count = ctypes.c_int(0)
    status = driver.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value < 1:
        return GpuProbe(0, f"the NVIDIA driver reports no GPU (cuDeviceGetCount error {status}, {count.value} devices)")
    return GpuProbe(count.value, "")


ARENA_STRATEGIES = {"same_as_requested": "kSameAsRequested", "next_power_of_two": "kNextPowerOfTwo"}


def provider_options(device_id: int = 0, conv_algo_search: str = "heuristic",
                     arena: str = "same_as_requested") -> dict[str, str]:
    """The CUDA provider's options for a serving process (the module docstring says why each)."""
    if arena not in ARENA_STRATEGIES:
        raise ValueError(f"arena_extend_strategy must be one of {sorted(ARENA_STRATEGIES)}, got {arena!r}")
    if device_id < 0:
        raise ValueError(f"cuda device id must be >= 0, got {device_id}")
    if conv_algo_search not in CONV_ALGO_SEARCH:
        raise ValueError(f"cudnn_conv_algo_search must be one of {CONV_ALGO_SEARCH}, got {conv_algo_search!r}")
    return {
        "device_id": str(device_id),
        "arena_extend_strategy": ARENA_STRATEGIES[arena],
        "cudnn_conv_algo_search": conv_algo_search.upper(),
        "cudnn_conv_use_max_workspace": "1",
        "do_copy_in_default_stream": "1",
    }


def ladder_size(batch: int, ladder: tuple[int, ...] = BATCH_LADDER) -> int:
    """The rung a batch of `batch` images runs at: the smallest ladder size >= batch (or batch itself)."""
    return next((rung for rung in ladder if rung >= batch), batch)


def warm_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Every rung a batch of up to max_batch_size can land on."""
    return tuple(sorted({ladder_size(n) for n in (*[r for r in BATCH_LADDER if r < max_batch_size], max_batch_size)}))


@dataclass
class Timings:
    """Seconds of the last run: host-to-device copy, the graph on the device, device-to-host copy."""

    copy_in: float = 0.0
    compute: float = 0.0
    copy_out: float = 0.0


class BoundRunner:
    """Runs one session with I/O binding on `device` ("cuda" or "cpu"), one copy each way per batch.

    Not thread-safe: one runner serves one model, whose pipeline keeps one instance on CUDA, so the
    batcher runs one batch at a time.
    """

    def __init__(self, session: ort.InferenceSession, input_name: str, output_name: str,
                 device: str, device_id: int = 0, pad: bool = False) -> None:
        self.session, self.input_name, self.output_name = session, input_name, output_name
        self.device, self.device_id, self.pad = device, device_id, pad
        inputs = {node.name: node for node in session.get_inputs()}
        outputs = {node.name: node for node in session.get_outputs()}
        self.input_dtype = _NUMPY_TYPES[inputs[input_name].type]
        self.output_dtype = _NUMPY_TYPES[outputs[output_name].type]
        self.output_width = outputs[output_name].shape[1]  # classes: a fixed dimension in our exports
        self.timings = Timings()
        self._slots: dict[tuple[int, ...], tuple[ort.IOBinding, ort.OrtValue, ort.OrtValue]] = {}

    def _slot(self, shape: tuple[int, ...]):
        slot = self._slots.get(shape)
        if slot is None:
            value_in = ort.OrtValue.ortvalue_from_shape_and_type(shape, self.input_dtype, self.device, self.device_id)
            value_out = ort.OrtValue.ortvalue_from_shape_and_type(
                (shape[0], self.output_width), self.output_dtype, self.device, self.device_id
            )
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.input_name, value_in)
            binding.bind_ortvalue_output(self.output_name, value_out)
            slot = self._slots[shape] = (binding, value_in, value_out)
        return slot

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The output for `batch` ([N, ...] in any dtype; converted to the session's input type)."""
        count = batch.shape[0]
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        rung = ladder_size(count) if self.pad else count
        if rung != count:  # zero rows up to the rung: its cuDNN plan is already chosen and warm
            batch = np.concatenate([batch, np.zeros((rung - count, *batch.shape[1:]), self.input_dtype)])
        binding, value_in, value_out = self._slot(batch.shape)
        started = time.perf_counter()
        value_in.update_inplace(batch)
        copied = time.perf_counter()
        self.session.run_with_iobinding(binding)  # returns once the device has finished the graph
        ran = time.perf_counter()
        result = np.array(value_out.numpy()[:count])  # a copy: the buffer is reused by the next run
        self.timings = Timings(copied - started, ran - copied, time.perf_counter() - ran)
        return result
