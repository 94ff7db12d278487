"""Sized runs: a batch zero-padded to the next of a few fixed batch sizes, written straight into that
size's buffers, and run through I/O binding on a session that only ever sees that size.

Why fixed shapes: ONNX Runtime's CUDA Conv (the cuDNN-frontend path since 1.20) builds its execution
plan again whenever the input shape differs from the previous run's and keeps only the last one
(`UpdateState` in onnxruntime/core/providers/cuda/nn/conv.cc; microsoft/onnxruntime#23006). A batcher
changes the batch size from batch to batch, so one session serving every size rebuilds the plan of
every convolution for almost every batch, however well each size was warmed. With one session per
size (its batch dimension fixed by SessionOptions.add_free_dimension_override_by_name), no session
ever sees a second shape. One shared session for every size is kept for comparison.

Buffers: each size has an input and an output buffer, allocated once (page-locked on CUDA, so the
copies are DMA) and bound once. A batch is stacked into the input buffer in place; only the rows the
previous batch used beyond this one are zeroed. On CUDA the device buffers are bound and the two
copies made explicitly, so /metrics times them and a CUDA graph (one per size, `gpu_graph_id`)
replays at fixed addresses. On the CPU provider the host buffers are bound themselves.

The explanation outputs (embedding, maps, their classes) are bound the same way, to buffers of their
own per size: the graph computes them on every run anyway, so binding them costs no copy, and a run
that asks for them (`run_all`) copies them out too, on the session of its size like any other batch.

The runner serves one batch at a time: its buffers are shared by every call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from service.engine import cuda
from service.engine.tensors import ORT_DTYPES

log = logging.getLogger("service.engine.sized")

GRAPH_ID = "gpu_graph_id"  # ORT's run option naming which captured CUDA graph a run replays
# ORT's CUDA provider runs a graph normally a time or two before it captures it: a failure in any of
# the first runs of a size may be the capture's.
CAPTURE_RUNS = 3


@dataclass(frozen=True)
class Timings:
    """Seconds of one batch's stages: the copy in (stacking, and to the device on CUDA), the graph, the copy out."""

    copy_in: float
    compute: float
    copy_out: float


def rung_for(count: int, sizes: Sequence[int]) -> int:
    """The batch size a batch of `count` runs at: the smallest of `sizes` (increasing) that holds it."""
    for size in sizes:
        if size >= count:
            return size
    raise ValueError(f"a batch of {count} exceeds the largest batch size {sizes[-1]}")


class _Rung:
    """One batch size: its session, its buffers (host, and device on CUDA) and their binding."""

    def __init__(self, size: int, session: ort.InferenceSession, graph_id: int, runner: "SizedRunner") -> None:
        self.size, self.session = size, session
        device_id = runner.device_id if runner.device == "cuda" else None
        self.host_in, pinned_in = cuda.host_buffer((size, *runner.item_shape), runner.input_dtype, device_id)
        self.host_out, pinned_out = cuda.host_buffer((size, runner.classes), runner.output_dtype, device_id)
        self.pinned = pinned_in and pinned_out
        self.filled = 0  # rows of host_in that may be non-zero
        self.binding = session.io_binding()
        self.options = ort.RunOptions()
        if runner.graphs:
            self.options.add_run_config_entry(GRAPH_ID, str(graph_id))
        if runner.device == "cuda":
            self.device_in = _device_value(self.host_in.shape, runner.input_dtype, runner.device_id)
            self.device_out = _device_value(self.host_out.shape, runner.output_dtype, runner.device_id)
            self.bound_in, self.bound_out = self.device_in, self.device_out
            self.host_out_value = ort.OrtValue.ortvalue_from_numpy(self.host_out)
        else:  # the CPU provider reads and writes the host buffers themselves
            self.device_in = self.device_out = None
            self.bound_in = ort.OrtValue.ortvalue_from_numpy(self.host_in)
            self.bound_out = ort.OrtValue.ortvalue_from_numpy(self.host_out)
        self.binding.bind_ortvalue_input(runner.input_name, self.bound_in)
        self.binding.bind_ortvalue_output(runner.output_name, self.bound_out)
        # Extra outputs: on the device on CUDA (copied out only when asked), host arrays on the CPU.
        self.extras: dict[str, ort.OrtValue] = {}
        for name, (shape, dtype) in runner.extras.items():
            shape = (size, *shape)
            if runner.device == "cuda":
                value = _device_value(shape, dtype, runner.device_id)
            else:
                value = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype))
            self.binding.bind_ortvalue_output(name, value)
            self.extras[name] = value

    def fill(self, count: int, write: Callable[[np.ndarray], object]) -> None:
        """Write `count` rows in place, zero what the previous batch left beyond them."""
        write(self.host_in[:count])
        if self.filled > count:
            self.host_in[count : self.filled] = 0
        self.filled = count


class SizedRunner:
    """Runs batches at fixed sizes: `sessions` maps each size to its session (one object for all of
    them is the shared-session variant). `rebuild(graphs)` makes the sessions again, used once if a
    CUDA graph cannot be captured."""

    def __init__(
        self,
        sessions: Mapping[int, ort.InferenceSession],
        input_name: str,
        output_name: str,
        device: str = "cpu",
        device_id: int = 0,
        graphs: bool = False,
        rebuild: Callable[[bool], Mapping[int, ort.InferenceSession]] | None = None,
        name: str = "",
        extras: Mapping[str, tuple[tuple[int, ...], type]] | None = None,
    ) -> None:
        """`extras`: other outputs to bind, name -> (shape without the batch axis, numpy dtype)."""
        self.input_name, self.output_name = input_name, output_name
        self.extras = dict(extras or {})
        self.device, self.device_id, self.graphs, self.rebuild, self.name = device, device_id, graphs, rebuild, name
        self.timings = Timings(0.0, 0.0, 0.0)
        self.seen: dict[int, set[tuple[int, ...]]] = {}  # id(session) -> input shapes it ran with
        self._build(sessions)

    def _build(self, sessions: Mapping[int, ort.InferenceSession]) -> None:
        self.sizes = tuple(sorted(sessions))
        first = sessions[self.sizes[0]]
        inputs = {node.name: node for node in first.get_inputs()}
        outputs = {node.name: node for node in first.get_outputs()}
        self.input_dtype = ORT_DTYPES[inputs[self.input_name].type]
        self.output_dtype = ORT_DTYPES[outputs[self.output_name].type]
        self.item_shape = tuple(int(d) for d in inputs[self.input_name].shape[1:])
        self.classes = int(outputs[self.output_name].shape[1])  # a fixed dimension in our exports
        self.rungs = {size: _Rung(size, sessions[size], index, self) for index, size in enumerate(self.sizes)}
        self._runs = dict.fromkeys(self.sizes, 0)  # runs per size, to tell a capture failure

    @property
    def sessions(self) -> dict[int, ort.InferenceSession]:
        return {size: rung.session for size, rung in self.rungs.items()}

    @property
    def shared(self) -> bool:
        """One session serves every size (the earlier behaviour: the shape changes between batches)."""
        return len({id(rung.session) for rung in self.rungs.values()}) == 1 < len(self.rungs)

    @property
    def pinned(self) -> bool:
        """Whether every host buffer is page-locked (CUDA with a working driver)."""
        return all(rung.pinned for rung in self.rungs.values())

    def sizes_up_to(self, largest: int) -> tuple[int, ...]:
        """The sizes batches of 1..largest images land on: what warm-up must run."""
        return self.sizes[: self.sizes.index(rung_for(largest, self.sizes)) + 1]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The output for `batch` ([N, ...] in any dtype, cast to the session's input type)."""
        return self._batched(batch, extras=False)[self.output_name]

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every bound output for `batch`, by name: the output_name's and each of `extras`."""
        return self._batched(batch, extras=True)

    def run_arrays(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """The output for a batch of single inputs, stacked straight into the size's buffer."""
        started = time.perf_counter()
        rung = self.rungs[rung_for(len(arrays), self.sizes)]
        rung.fill(len(arrays), lambda rows: np.stack(arrays, out=rows))
        return self._execute(rung, len(arrays), started, extras=False)[self.output_name]

    def _batched(self, batch: np.ndarray, extras: bool) -> dict[str, np.ndarray]:
        largest = self.sizes[-1]
        if len(batch) > largest:  # not from the batcher (max_batch_size <= largest): in pieces
            pieces = [self._batched(batch[i : i + largest], extras) for i in range(0, len(batch), largest)]
            return {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}
        started = time.perf_counter()
        rung = self.rungs[rung_for(len(batch), self.sizes)]
        rung.fill(len(batch), lambda rows: np.copyto(rows, batch, casting="unsafe"))
        return self._execute(rung, len(batch), started, extras)

    def _execute(self, rung: _Rung, count: int, started: float, extras: bool) -> dict[str, np.ndarray]:
        """The size's run; its logits by output_name, and with `extras` every extra output, each [:count]."""
        if rung.device_in is not None:
            rung.device_in.update_inplace(rung.host_in)
        copied = time.perf_counter()
        try:
            rung.session.run_with_iobinding(rung.binding, rung.options)  # returns once the device is done
        except Exception as error:  # noqa: BLE001 - a graph that cannot be captured: once, then without graphs
            if not (self.graphs and self._runs[rung.size] < CAPTURE_RUNS and self.rebuild is not None):
                raise
            self._without_graphs(error)
            return self._batched(rung.host_in[:count].copy(), extras)
        self._runs[rung.size] += 1
        self.seen.setdefault(id(rung.session), set()).add(tuple(rung.bound_in.shape()))
        ran = time.perf_counter()
        if rung.device_out is not None:
            _copy_out(rung)
        outputs = {self.output_name: rung.host_out[:count].copy()}  # the buffer is reused by the next batch
        if extras:
            outputs.update({name: value.numpy()[:count].copy() for name, value in rung.extras.items()})
        self.timings = Timings(copied - started, ran - copied, time.perf_counter() - ran)
        return outputs

    def _without_graphs(self, error: Exception) -> None:
        log.warning(
            "model %s: CUDA graph capture failed (%s): running without CUDA graphs",
            self.name, str(error).splitlines()[0][:300], extra={"model": self.name},
        )  # fmt: skip
        self.graphs = False
        self._build(self.rebuild(False))


def _device_value(shape: tuple[int, ...], dtype, device_id: int) -> ort.OrtValue:
    return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", device_id)


# onnxruntime.copy_tensors (1.23+) copies into the page-locked buffer itself. Its first copy is checked
# against OrtValue.numpy(), the long-standing path; on any failure or difference numpy() is used.
_copy_tensors = {"state": "unchecked" if hasattr(ort, "copy_tensors") else "off"}


def _copy_out(rung: _Rung) -> None:
    """Device output into the page-locked host buffer."""
    state = _copy_tensors["state"]
    if state != "off":
        try:
            ort.copy_tensors([rung.device_out], [rung.host_out_value], None)
        except Exception as error:  # noqa: BLE001 - no CUDA data transfer registered with the environment
            log.info("onnxruntime.copy_tensors unavailable (%s): output copied through numpy", error)
            _copy_tensors["state"] = "off"
        else:
            if state == "checked":
                return
            if np.array_equal(rung.host_out, rung.device_out.numpy(), equal_nan=rung.host_out.dtype.kind == "f"):
                _copy_tensors["state"] = "checked"
                return
            log.warning("onnxruntime.copy_tensors copied a different output: output copied through numpy")
            _copy_tensors["state"] = "off"
    np.copyto(rung.host_out, rung.device_out.numpy())
