"""The sized path (service/engine/sized.py) on ONNX Runtime's CPU provider, with the tiny exported models:
one session per batch size answers exactly as one session does, every batch size lands on a session
whose shape never changes, the in-place fill answers as the plain path, and a bad list of batch sizes
is refused at start-up in one line. Page-locked memory and CUDA graphs need a GPU: bench/gpu/check.py."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from artifact.preprocess import random_batch
from service.engine import sized
from service.config import ConfigError, ServeConfig, parse
from service.engine.runtime import load_model

SIZES = (1, 4, 8)


def _load(models_dir, name: str, **settings):
    config = ServeConfig(models=models_dir, providers=("cpu",), max_batch_size=SIZES[-1], cuda_batch_sizes=SIZES,
                         **settings)  # fmt: skip
    return load_model(models_dir / name / "model.onnx", config)


@pytest.fixture(scope="module", params=["resnet18", "resnet20"])
def models(request, tiny_models_dir):
    """The plain path, per-size sessions and one shared session, for one tiny model."""
    name = request.param
    return (_load(tiny_models_dir, name), _load(tiny_models_dir, name, sized_on_cpu=True),
            _load(tiny_models_dir, name, sized_on_cpu=True, cuda_sessions="shared"))  # fmt: skip


def test_the_cpu_default_is_the_plain_session(models):
    plain, _, _ = models
    assert plain.runner is None and plain.timings is None


def test_per_size_sessions_answer_exactly_as_one_session(models):
    plain, per_size, shared = models
    assert per_size.runner.sizes == SIZES and not per_size.runner.shared and shared.runner.shared
    prep = plain.card.preprocessing
    for count in (8, 3, 1, 5, 4, 2, 7):  # shrinking and growing: padding rows must never leak
        batch = random_batch(prep, count, seed=count)
        expected = plain.probabilities(batch)
        for model in (per_size, shared):
            assert np.abs(model.probabilities(batch) - expected).max() == 0, count
            assert np.abs(model.probabilities_of(list(batch)) - expected).max() == 0, count  # the in-place fill


def test_every_batch_size_lands_on_a_session_whose_shape_never_changes(models):
    _, per_size, shared = models
    prep = per_size.card.preprocessing
    for count in range(1, SIZES[-1] + 1):
        per_size.probabilities_of(list(random_batch(prep, count, seed=count)))
        shared.probabilities(random_batch(prep, count, seed=count))
    sessions = per_size.runner.sessions
    assert len({id(session) for session in sessions.values()}) == len(SIZES)
    for size, session in sessions.items():
        (node,) = session.get_inputs()
        shape = (size, *prep.input_shape(1)[1:])
        assert tuple(node.shape) == shape  # ORT itself refuses any other shape on this session
        assert per_size.runner.seen[id(session)] == {shape}
    # The shared session is the earlier behaviour: one session, every size's shape.
    (only,) = shared.runner.seen.values()
    assert only == {(size, *prep.input_shape(1)[1:]) for size in SIZES}


def test_explanations_run_at_their_batch_size_and_answer_as_the_plain_session(models):
    plain, per_size, shared = models
    assert set(per_size.runner.extras) == {extra.name for extra in plain.card.extra_outputs} != set()
    prep = plain.card.preprocessing
    for count in (8, 3, 1, 5):  # shrinking and growing: padding rows must never leak into the maps
        batch = random_batch(prep, count, seed=count)
        expected = plain.explain(batch)
        for model in (per_size, shared):
            outputs = model.explain(batch)
            assert outputs.keys() == expected.keys()
            for name, value in expected.items():
                assert outputs[name].shape == value.shape and np.abs(outputs[name] - value).max() == 0, (name, count)
    for size, session in per_size.runner.sessions.items():  # explanations kept each session's one shape
        assert per_size.runner.seen[id(session)] == {(size, *prep.input_shape(1)[1:])}


def test_warm_up_runs_every_size_up_to_the_largest_batch(tiny_models_dir):
    model = _load(tiny_models_dir, "resnet20", sized_on_cpu=True)
    model.warm_up((1, 3), runs=1)
    assert model.warm and model.runner.sizes_up_to(3) == (1, 4)
    assert {shape[0] for shapes in model.runner.seen.values() for shape in shapes} == {1, 4}


def test_a_batch_lands_on_the_smallest_size_that_holds_it():
    assert [sized.rung_for(n, (1, 8, 32, 128)) for n in (1, 2, 8, 9, 32, 33, 128)] == [1, 8, 8, 32, 32, 128, 128]
    with pytest.raises(ValueError, match="a batch of 129 exceeds the largest batch size 128"):
        sized.rung_for(129, (1, 8, 32, 128))


def test_batch_sizes_come_from_flags_and_environment(tmp_path):
    config = parse(["--models", str(tmp_path)], environ={"RESNET_SERVE_CUDA_BATCH_SIZES": "1,16,64,128"})
    assert config.cuda_batch_sizes == (1, 16, 64, 128) and config.cuda_sessions == "per_size"
    config = parse(["--models", str(tmp_path), "--cuda-batch-sizes", "2,8", "--cuda-graphs"])
    assert config.cuda_batch_sizes == (2, 8) and config.cuda_graphs
    assert ServeConfig(models=tmp_path).cuda_batch_sizes == (1, 8, 16, 32, 64, 128)


def test_the_batch_limit_defaults_to_the_largest_size_on_cuda_and_8_on_the_cpu(tmp_path):
    config = ServeConfig(models=tmp_path, cuda_batch_sizes=(1, 8, 32))
    assert config.max_batch_size is None and config.batch_limit("cuda") == 32 and config.batch_limit("cpu") == 8
    given = parse(["--models", str(tmp_path), "--max-batch-size", "16"])
    assert given.batch_limit("cuda") == given.batch_limit("cpu") == 16
    # The queue likewise: 128 images on the CPU, eight of the largest batch on CUDA, unless given.
    assert config.queue_size is None and config.queue_limit("cuda") == 8 * 32 and config.queue_limit("cpu") == 128
    assert parse(["--models", str(tmp_path), "--queue-size", "64"]).queue_limit("cuda") == 64
    with pytest.raises(ConfigError, match=r"max_images \(200\) must not exceed queue_size \(128\)"):
        ServeConfig(models=tmp_path, max_images=200)
    # A CPU-only service never runs them, so a larger max_batch_size is not refused there.
    assert ServeConfig(models=tmp_path, providers=("cpu",), max_batch_size=256).max_batch_size == 256


@pytest.mark.parametrize("settings, message", [
    ({"cuda_batch_sizes": (8, 4, 16)}, "cuda_batch_sizes must be strictly increasing, got '8,4,16'"),
    ({"cuda_batch_sizes": (1, 8, 8)}, "cuda_batch_sizes must be strictly increasing, got '1,8,8'"),
    ({"cuda_batch_sizes": (0, 8)}, "cuda_batch_sizes must be batch sizes >= 1, got '0,8'"),
    ({"cuda_batch_sizes": ()}, "cuda_batch_sizes must be batch sizes >= 1, got ''"),
    ({"cuda_batch_sizes": (1, 8), "max_batch_size": 16},
     "cuda_batch_sizes' largest size (8) is below max_batch_size (16): add a size >= 16 or lower max_batch_size"),
    ({"cuda_sessions": "many"}, "cuda_sessions must be per_size or shared, got 'many'"),
])  # fmt: skip
def test_bad_batch_sizes_are_refused(tmp_path, settings, message):
    with pytest.raises(ConfigError) as error:
        ServeConfig(models=tmp_path, **settings)
    assert str(error.value) == message


@pytest.mark.parametrize("flags, env", [
    (["--cuda-batch-sizes", "8,4"], {}),
    (["--max-batch-size", "64"], {"RESNET_SERVE_CUDA_BATCH_SIZES": "1,8,32"}),
    (["--cuda-batch-sizes", "1,x"], {}),
])  # fmt: skip
def test_a_bad_batch_size_setting_exits_2_with_one_line(tiny_models_dir, flags, env):
    done = subprocess.run([sys.executable, "-m", "service.cli", "--models", str(tiny_models_dir), *flags],
                          capture_output=True, text=True, timeout=60, env={**_environ(), **env})  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resnet-serve: ") and "cuda_batch_sizes" in lines[0].replace(
        "RESNET_SERVE_CUDA_BATCH_SIZES", "cuda_batch_sizes").replace("--cuda-batch-sizes", "cuda_batch_sizes"), lines


def _environ() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("RESNET_SERVE_")}


def test_a_batch_larger_than_every_size_runs_in_pieces(models):
    plain, per_size, _ = models
    batch = random_batch(plain.card.preprocessing, 2 * SIZES[-1] + 3, seed=5)
    assert np.abs(per_size.probabilities(batch) - plain.probabilities(batch)).max() == 0


def test_the_service_answers_the_same_on_the_sized_path(tiny_models_dir, references, tmp_path):
    """resnet-serve --sized-on-cpu: concurrent requests batched by the batcher, stacked straight into
    the sizes' buffers, answer as the model run one image at a time; the start-up log says which path."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from artifact.preprocess import prepare

    from .conftest import assert_answers, start_server, variants

    server = start_server(tiny_models_dir, tmp_path, "--sized-on-cpu", "--cuda-batch-sizes", "1,4,8",
                          "--max-batch-size", "8", "--providers", "cpu")  # fmt: skip
    try:
        images = variants(12)
        with ThreadPoolExecutor(12) as pool:
            bodies = list(pool.map(lambda data: httpx.post(
                server.url + "/classify", content=data, headers={"Content-Type": "image/jpeg"},
                params={"top_k": 3}, timeout=60).json(), images))  # fmt: skip
        card = references["resnet18"].card
        for data, body in zip(images, bodies):
            expected = references["resnet18"].probabilities(prepare(data, card.preprocessing, 50_000_000))
            assert_answers(body["predictions"], expected, card, 3)
        assert "batch sizes 1,4,8 (one session each)" in server.log()
        infos = httpx.get(server.url + "/models").json()["models"]
        assert all(info["device_memory_bytes"] is None for info in infos)
    finally:
        server.stop()


class _RefusesToRun:
    """A session whose runs fail, as a CUDA graph capture fails on a GPU (which this test cannot have)."""

    def __init__(self, session) -> None:
        self.session = session

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run_with_iobinding(self, *args):
        raise RuntimeError("CUDA graph capture failed: operation not permitted when stream is capturing")


def test_a_graph_that_cannot_be_captured_falls_back_with_one_warning(tiny_models_dir, caplog):
    model = _load(tiny_models_dir, "resnet20", sized_on_cpu=True)
    real = model.runner.sessions
    runner = sized.SizedRunner({n: _RefusesToRun(s) for n, s in real.items()}, model.card.input_name,
                               model.card.output_name, graphs=True, rebuild=lambda graphs: real, name="resnet20")  # fmt: skip
    batch = random_batch(model.card.preprocessing, 3, seed=3)
    with caplog.at_level("WARNING", logger="service.engine.sized"):
        first, second = runner.run(batch), runner.run(batch[:1])
    assert not runner.graphs and runner.sessions == real
    np.testing.assert_array_equal(first, model.runner.run(batch))
    np.testing.assert_array_equal(second, model.runner.run(batch[:1]))
    assert [r.getMessage() for r in caplog.records] == [
        "model resnet20: CUDA graph capture failed (CUDA graph capture failed: operation not permitted when stream "
        "is capturing): running without CUDA graphs"
    ]
