"""The CUDA path, checked here with the CPU fallback: the provider's options, the GPU probe, the one
warning a CPU-only machine gets, host buffers, and the sized runner's I/O binding against a plain
session.run (the sized path itself: test_sized.py).

On a machine with a usable NVIDIA GPU the fallback tests skip; bench/gpu/check.py checks the CUDA
side itself on such a machine.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.engine import cuda, runtime, sized
from service.config import ConfigError, ServeConfig, parse

NO_GPU = not cuda.probe().usable
needs_no_gpu = pytest.mark.skipif(not NO_GPU, reason="this machine has a usable GPU: no fallback to check")


def _graph_model(path, elem: int, classes: int = 5) -> None:
    """A real ONNX model, Conv -> GlobalAveragePool -> Flatten -> Gemm, [N,3,8,8] -> [N,classes]."""
    rng = np.random.default_rng(0)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    weights = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(dtype), "w"),
        numpy_helper.from_array(rng.standard_normal((classes, 4)).astype(dtype), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", elem, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", elem, ["batch", classes])], weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)


@pytest.fixture(scope="module", params=[TensorProto.FLOAT, TensorProto.FLOAT16], ids=["fp32", "fp16"])
def graph(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    _graph_model(path, request.param)
    return path


@pytest.fixture(scope="module")
def session(graph) -> ort.InferenceSession:
    return ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])


def test_provider_options_are_the_documented_serving_ones():
    options = cuda.provider_options(1, "heuristic")
    assert options == {
        "device_id": "1",
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "cudnn_conv_use_max_workspace": "1",
        "do_copy_in_default_stream": "1",
        "prefer_nhwc": "1",
    }
    assert cuda.provider_options(nhwc=False)["prefer_nhwc"] == "0"
    assert cuda.provider_options()["cudnn_conv_algo_search"] == "HEURISTIC"
    assert cuda.provider_options(arena="next_power_of_two")["arena_extend_strategy"] == "kNextPowerOfTwo"
    # The values are checked once, where the settings are read.
    with pytest.raises(ConfigError, match="cuda_arena_extend_strategy"):
        ServeConfig(models=Path("m"), cuda_arena_extend_strategy="grow")
    with pytest.raises(ConfigError, match="cuda_device_id"):
        ServeConfig(models=Path("m"), cuda_device_id=-1)
    with pytest.raises(ConfigError, match="cudnn_conv_algo_search"):
        ServeConfig(models=Path("m"), cudnn_conv_algo_search="fastest")


def test_config_carries_and_checks_the_cuda_settings(tmp_path):
    config = parse(["--models", str(tmp_path)], environ={"RESNET_SERVE_CUDA_DEVICE_ID": "2",
                                                          "RESNET_SERVE_CUDNN_CONV_ALGO_SEARCH": "heuristic"})
    assert (config.cuda_device_id, config.cudnn_conv_algo_search) == (2, "heuristic")
    with pytest.raises(ConfigError, match="cuda_device_id"):
        ServeConfig(models=tmp_path, cuda_device_id=-1)
    with pytest.raises(ConfigError, match="cudnn_conv_algo_search"):
        ServeConfig(models=tmp_path, cudnn_conv_algo_search="fast")
    with pytest.raises(ConfigError, match="cuda_arena_extend_strategy"):
        ServeConfig(models=tmp_path, cuda_arena_extend_strategy="grow")
    assert ServeConfig(models=tmp_path).cudnn_conv_algo_search == "heuristic"
    assert ServeConfig(models=tmp_path).cuda_prefer_nhwc
    assert not parse(["--models", str(tmp_path), "--no-cuda-prefer-nhwc"]).cuda_prefer_nhwc
    assert not parse(["--models", str(tmp_path)], environ={"RESNET_SERVE_CUDA_PREFER_NHWC": "off"}).cuda_prefer_nhwc


@needs_no_gpu
def test_cuda_options_reach_the_provider_list_only_with_a_gpu(tmp_path):
    # Built and validated without a GPU: the options exist, the CUDA entry is dropped before ORT sees it.
    config = ServeConfig(models=tmp_path, providers=("cuda", "cpu"))
    assert runtime.providers_with_options(config) == ["CPUExecutionProvider"]
    assert runtime.providers_with_options(ServeConfig(models=tmp_path, providers=("cpu",))) == ["CPUExecutionProvider"]


@needs_no_gpu
def test_no_gpu_gives_one_clear_line_and_no_onnx_runtime_errors(models_dir):
    # A fresh process: the probe and the one-line warning are once per process.
    code = (
        "import logging, sys; from pathlib import Path\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr, format='%(levelname)s %(message)s')\n"
        "from service.config import ServeConfig; from service.engine.runtime import load_models\n"
        f"models = load_models(ServeConfig(models=Path({str(models_dir)!r}), providers=('cuda', 'cpu')))\n"
        "print(sorted((m.name, m.device, m.providers) for m in models.values()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "CUDA" in line or "libcuda" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING CUDA requested but"), done.stderr
    assert "[E:onnxruntime" not in done.stderr and "libcuda.so.1: cannot open" not in done.stderr
    assert "'cpu', ('CPUExecutionProvider',)" in done.stdout


def test_probe_answers_without_onnx_runtime():
    probe = cuda.probe()
    assert probe.usable == (probe.devices > 0)
    assert bool(probe.reason) == (not probe.usable)


def test_graphs_add_the_cuda_graph_option_only_when_asked():
    assert "enable_cuda_graph" not in cuda.provider_options()
    assert cuda.provider_options(graphs=True)["enable_cuda_graph"] == "1"


def test_host_buffers_are_zeroed_aligned_and_pageable_without_a_gpu():
    array, pinned = cuda.host_buffer((3, 4, 5), np.float16, None)
    assert array.shape == (3, 4, 5) and array.dtype == np.float16 and not array.any()
    assert array.ctypes.data % 4096 == 0 and array.flags.c_contiguous and not pinned
    if NO_GPU:
        assert cuda.device_free_bytes(0) is None and cuda.host_buffer((2,), np.uint8, 0)[1] is False


def _fixed(path, size: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_free_dimension_override_by_name("batch", size)
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("shared", [False, True], ids=["per-size", "shared"])
def test_io_binding_equals_session_run_on_the_cpu_provider(graph, session, shared):
    path = graph
    sessions = dict.fromkeys((1, 4, 8), session) if shared else {n: _fixed(path, n) for n in (1, 4, 8)}
    runner = sized.SizedRunner(sessions, "input", "logits", "cpu")
    dtype = runner.input_dtype
    rng = np.random.default_rng(1)
    for count in (1, 3, 8, 3, 2):  # 3 after 8: the rows the 8-batch left must not leak into it
        batch = rng.standard_normal((count, 3, 8, 8)).astype(np.float32)
        (expected,) = session.run(["logits"], {"input": batch.astype(dtype)})
        got = runner.run(batch)  # float32 in, converted to the session's own input type
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(runner.run_arrays(list(batch.astype(dtype))), expected)
        timings = runner.timings
        assert timings.copy_in >= 0 and timings.compute > 0 and timings.copy_out >= 0
    assert runner.shared == shared


def test_a_result_survives_the_next_run(graph):
    runner = sized.SizedRunner({2: _fixed(graph, 2)}, "input", "logits", "cpu")
    first_batch = np.ones((2, 3, 8, 8), np.float32)
    first = runner.run(first_batch)
    kept = first.copy()
    runner.run(-first_batch)
    np.testing.assert_array_equal(first, kept)


def test_loaded_model_reports_its_real_device(models_dir, caplog):
    config = ServeConfig(models=models_dir, providers=("cpu",))
    with caplog.at_level(logging.INFO, logger="service.engine.runtime"):
        models = runtime.load_models(config)
    for model in models.values():
        assert model.device == "cpu" and model.runner is None and model.timings is None
        assert model.device_memory_bytes is None
    assert any("on CPUExecutionProvider" in r.getMessage() for r in caplog.records)
