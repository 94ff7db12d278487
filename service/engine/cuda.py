"""The CUDA side of the runtime: is a GPU usable, the CUDA provider's options, and the driver calls
the sized path (service/engine/sized.py) needs: device memory in use and page-locked host buffers.

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
    raw throughput at a fixed batch size was no lower;
  - cudnn_conv_use_max_workspace 1: lets cuDNN pick algorithms that need a large workspace (the
    documented speed-up for convolution networks);
  - do_copy_in_default_stream 1: the documented safe default; ORT runs each session on a compute
    stream of its own, and copies in the default stream are ordered before it;
  - prefer_nhwc 1 (--no-cuda-prefer-nhwc turns it off): convolutions run channels-last, the layout
    tensor cores read; raw resnet18 on an H200 ran 1.36-1.53x (fp16) and 1.29x (fp32) faster host to
    host (docs/gpu.md);
  - enable_cuda_graph 1, only with --cuda-graphs: the session captures its run as a CUDA graph and
    replays it (ORT's CUDA provider documentation: fixed shapes, inputs and outputs bound on the
    device at fixed addresses, which the sized path's buffers are).

Page-locked buffers: onnxruntime 1.31's Python API no longer takes the "cuda_pinned" device name
(pinned memory comes as an OrtEpDevice's HOST_ACCESSIBLE memory info, which depends on how the CUDA
provider was registered), so host buffers are page-locked with the driver's cuMemHostRegister, in
the device's primary context, the one ONNX Runtime's CUDA runtime calls use too.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import weakref
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("service.engine.cuda")

CUDA_PROVIDER = "CUDAExecutionProvider"


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


# ServeConfig's names (checked there, service/config.py) to ONNX Runtime's option values.
ARENA_STRATEGIES = {"same_as_requested": "kSameAsRequested", "next_power_of_two": "kNextPowerOfTwo"}


def provider_options(device_id: int = 0, conv_algo_search: str = "heuristic",
                     arena: str = "same_as_requested", graphs: bool = False, nhwc: bool = True) -> dict[str, str]:
    """The CUDA provider's options for a serving process (the module docstring says why each);
    the values are ServeConfig's, validated there."""
    return {
        "device_id": str(device_id),
        "arena_extend_strategy": ARENA_STRATEGIES[arena],
        "cudnn_conv_algo_search": conv_algo_search.upper(),
        "cudnn_conv_use_max_workspace": "1",
        "do_copy_in_default_stream": "1",
        "prefer_nhwc": "1" if nhwc else "0",
        **({"enable_cuda_graph": "1"} if graphs else {}),
    }



# --- the driver: device memory and page-locked host memory ------------------------------------------
_PORTABLE = 0x01  # CU_MEMHOSTREGISTER_PORTABLE: pinned for every CUDA context, ORT's included
_PAGE = 4096


class _Driver:
    """libcuda.so.1 with device `device_id`'s primary context retained for the process's life."""

    def __init__(self, device_id: int) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")
        self._check(self.lib.cuInit(0), "cuInit")
        device = ctypes.c_int(0)
        self._check(self.lib.cuDeviceGet(ctypes.byref(device), device_id), "cuDeviceGet")
        self.context = ctypes.c_void_p(0)
        self._check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.context), device), "cuDevicePrimaryCtxRetain")

    @staticmethod
    def _check(status: int, call: str) -> None:
        if status != 0:
            raise OSError(f"{call} failed with CUDA error {status}")

    def _in_context(self, call):
        self._check(self.lib.cuCtxPushCurrent_v2(self.context), "cuCtxPushCurrent")
        try:
            return call()
        finally:
            self.lib.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p(0)))

    def free_bytes(self) -> int:
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        self._in_context(lambda: self._check(self.lib.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo"))
        return free.value

    def register(self, address: int, size: int) -> None:
        self._in_context(lambda: self._check(
            self.lib.cuMemHostRegister_v2(ctypes.c_void_p(address), ctypes.c_size_t(size), _PORTABLE), "cuMemHostRegister"))

    def unregister(self, address: int) -> None:
        try:  # runs from a finalizer, possibly at exit: nothing to report to
            self._in_context(lambda: self.lib.cuMemHostUnregister(ctypes.c_void_p(address)))
        except OSError:
            pass


@functools.cache
def _driver(device_id: int) -> _Driver | None:
    if not probe().usable:
        return None
    try:
        return _Driver(device_id)
    except (OSError, AttributeError) as error:  # a driver without these entry points: no figures, no pinning
        log.warning("CUDA driver calls unavailable (%s): no device memory figures, pageable host buffers", error)
        return None


def device_free_bytes(device_id: int) -> int | None:
    """Free memory on the GPU, in bytes (the whole device: other processes count); None without one."""
    driver = _driver(device_id)
    return driver.free_bytes() if driver is not None else None


def host_buffer(shape: tuple[int, ...], dtype, device_id: int | None) -> tuple[np.ndarray, bool]:
    """A zeroed, page-aligned host array, page-locked for DMA when `device_id` names a usable GPU.

    Returns (array, pinned). A failed lock leaves a pageable array: slower copies, same results."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(size + _PAGE, np.uint8)
    start = -raw.ctypes.data % _PAGE
    array = raw[start : start + size].view(dtype).reshape(shape)
    driver = _driver(device_id) if device_id is not None else None
    if driver is None or size == 0:
        return array, False
    try:
        driver.register(array.ctypes.data, size)
    except OSError as error:
        _say_pageable(str(error))
        return array, False
    # Unlock before numpy frees the memory: `raw` owns it and outlives every view of it.
    weakref.finalize(raw, driver.unregister, array.ctypes.data)
    return array, True


@functools.cache
def _say_pageable(reason: str) -> None:
    log.warning("page-locking host buffers failed (%s): copies use pageable memory", reason)
