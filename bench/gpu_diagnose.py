"""The device check's diagnose phase: where the service's GPU time goes, measured without HTTP.

    python -m bench.gpu_check --skip export,service,train,cli-train     # with raw; or: make gpu-check
    python -m bench.gpu_check --device cpu --models DIR --diagnose-models resnet18 \
        --skip export,raw,service,train,cli-train                         # on the CPU provider (its test)

On the H200 the service answered 2-4% of the images per second that raw ONNX Runtime gave through
the same BoundRunner at one fixed batch size (docs/gpu.md). Each case runs the service's own objects
(service.engine.runtime.load_model, its BoundRunner with pad=True, service.engine.pipeline.ModelPipeline) and
changes one thing against the baseline, so that the slow case names the cause (docs/gpu.md, "The
diagnose phase", has the table of cases and the fix each outcome points to):

  fixed         batch 16 again and again on one thread: the raw phase's case, the baseline;
  mixed         batch sizes 16, 3, 64, 7, 128, 1, 32 in turn, padded to the ladder, every rung warmed
                first, against the same rungs each run at a fixed size;
  threads       the fixed case, each call on the next of 8 Python threads (ORT's per-thread state);
  model_thread  the fixed case through ModelPipeline._run_batch (asyncio, the inference thread);
  loaded        the fixed case while one thread per core decodes the bench JPEGs;
  session       the fixed case on a session with ORT's default session and provider options;
  batcher       ModelPipeline.infer from 128 one-image clients: the batcher, without HTTP or decoding.

Each gives img/s over its wall-clock time, per-batch ms (median, p90), the medians of
BoundRunner.timings, and its ratio to the fixed case. A ratio under SLOW names a suspect; for mixed
the ratio is to the same sizes at fixed shapes, for session the serving session's over the default's.
Without a GPU the phase runs on the CPU provider (--device cpu) through the same BoundRunner on host
buffers: tests/service/test_cuda_check.py runs it so.
"""

from __future__ import annotations

import asyncio
import queue
import tempfile
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

FIXED_BATCH = 16
MIXED_CYCLE = (16, 3, 64, 7, 128, 1, 32)  # sizes from 1 to 128 changing every batch, as a batcher under load
THREADS = 8
CLIENTS = 128  # one-image clients of the batcher case, as resnet-bench's concurrency 128
MIN_RUNS = 5
SLOW = 0.7  # a case under 0.7x the baseline's img/s is a suspect (the service target is 0.7x raw)
# What a slow case points to, and the fix it suggests (docs/gpu.md, "The diagnose phase").
SUSPECTS = {
    "mixed": "batch shape changes: one session per ladder size, or CUDA graphs per size",
    "threads": "ORT's per-thread CUDA state: pin inference to one thread",
    "model_thread": "the pipeline's hand-off (asyncio, executor, np.stack): run the batch in place",
    "loaded": "CPU or GIL pressure from decoding: fewer decode threads, or decode in processes",
    "session": "a serving option (session_options or the CUDA provider options)",
    "batcher": "the batcher's batch sizes or scheduling (see its mean_batch)",
}


def _stderr(message: str) -> None:
    print(f"gpu-check diagnose: {message}", file=sys.stderr, flush=True)


def diagnose(models: Path, names: list[str], device: str, seconds: float, device_id: int = 0, log=_stderr) -> dict:
    """Every case for each named model in `models` (NAME/model.onnx), on `device` ("cuda" or "cpu")."""
    from service.config import ServeConfig, available_cpus

    found = {path.parent.name: path for path in sorted(models.glob("*/model.onnx"))}
    missing = [name for name in names if name not in found]
    if missing:
        raise FileNotFoundError(f"no {', '.join(missing)} in {models} (it has {', '.join(found) or 'nothing'})")
    providers = ("cuda", "cpu") if device == "cuda" else ("cpu",)
    config = ServeConfig(models=models, providers=providers, max_batch_size=max(MIXED_CYCLE),
                         queue_size=2 * CLIENTS, cuda_device_id=device_id)
    with tempfile.TemporaryDirectory() as folder:  # not in --out: the device returns 8 files at most
        jpegs = _jpegs(Path(folder))
        report = {name: _model(found[name], config, device, seconds, jpegs, available_cpus(), log) for name in names}
    return {"device": device, "seconds_per_case": seconds, "fixed_batch": FIXED_BATCH, "mixed_cycle": list(MIXED_CYCLE),
            "threads": THREADS, "clients": CLIENTS, "slow_below": SLOW, "models": report}


def _jpegs(folder: Path) -> list[bytes] | str:
    """The bench's photo payloads (bench/payloads.py), or why they are missing."""
    from bench import payloads

    try:
        return [path.read_bytes() for path in payloads.build(folder, ("photo",))["photo"]]
    except (FileNotFoundError, ModuleNotFoundError) as error:
        return f"{type(error).__name__}: {error}"


def _model(path: Path, config, device: str, seconds: float, jpegs, cores: int, log) -> dict:
    from service.engine import cuda
    from artifact.preprocess import random_batch
    from service.engine.runtime import load_model

    model = load_model(path, config)
    if model.device != device:
        raise RuntimeError(f"{model.name}: ONNX Runtime runs it on {model.providers}, not on {device}")
    card = model.card
    if model.runner is None:  # the CPU provider: the CUDA path's BoundRunner on host buffers
        model.runner = cuda.BoundRunner(model.session, card.input_name, card.output_name, "cpu", pad=True)
    warm_s = model.warm_up((1, config.max_batch_size), config.warmup_runs)  # every rung, as the service
    inputs = {n: random_batch(card.preprocessing, n, seed=n) for n in {FIXED_BATCH, *MIXED_CYCLE}}
    fixed = lambda i: _call(model, inputs[FIXED_BATCH])  # noqa: E731
    cases = {"fixed": _summary(*_repeat(fixed, seconds))}
    log(f"{model.name} fixed: {cases['fixed']['images_per_s']:.0f} img/s (warm-up {warm_s:.1f} s)")
    measures = {
        "mixed": lambda: _mixed(model, inputs, seconds),
        "threads": lambda: _threads(fixed, seconds),
        "model_thread": lambda: asyncio.run(_model_thread(model, config, inputs[FIXED_BATCH], seconds)),
        "loaded": lambda: _loaded(fixed, seconds, jpegs, card.preprocessing, config.max_pixels, cores),
        "session": lambda: _default_session(model, config, device, inputs[FIXED_BATCH], seconds),
        "batcher": lambda: asyncio.run(_batcher(model, config, inputs[1][0], seconds)),
    }
    for name, measure in measures.items():
        try:
            cases[name] = measure()
        except Exception as error:  # noqa: BLE001 - one failed case must not lose the others
            cases[name] = {"error": f"{type(error).__name__}: {error}"[-1000:]}
        log(f"{model.name} {name}: " + (f"{cases[name]['images_per_s']:.0f} img/s, p50 {cases[name]['p50_ms']:.2f} ms"
                                        if "error" not in cases[name] else cases[name]["error"]))
    base = cases["fixed"]["images_per_s"]
    for name, case in cases.items():
        if "images_per_s" in case:
            case["x_fixed"] = round(case["images_per_s"] / base, 3)
    if "x_fixed" in cases["session"]:  # the suspect here is the serving session: slower than ORT's defaults
        cases["session"]["serving_x_default"] = round(1 / cases["session"]["x_fixed"], 3)
    ratio = {name: case.get({"mixed": "x_same_sizes", "session": "serving_x_default"}.get(name, "x_fixed"))
             for name, case in cases.items()}
    slow = [name for name, x in ratio.items() if name in SUSPECTS and x is not None and x < SLOW]
    return {"precision": card.precision, "input_dtype": card.input_dtype, "providers": list(model.providers),
            "warm_up_s": round(warm_s, 2), "cases": cases, "slow": slow, "suspects": [SUSPECTS[n] for n in slow]}


# --- timing -----------------------------------------------------------------------------------------
def _call(model, batch: np.ndarray) -> tuple:
    """One batch through the service's own call (LoadedModel.probabilities): wall, images, stage times."""
    started = time.perf_counter()
    model.probabilities(batch)
    wall = time.perf_counter() - started
    t = model.timings
    return wall, len(batch), (t.copy_in, t.compute, t.copy_out)


def _repeat(step, seconds: float, min_runs: int = MIN_RUNS, multiple: int = 1) -> tuple[list, float]:
    """step(i) for at least `seconds` and `min_runs` runs (a multiple of `multiple`); samples, elapsed."""
    samples, started = [], time.perf_counter()
    while len(samples) < min_runs or time.perf_counter() - started < seconds or len(samples) % multiple:
        samples.append(step(len(samples)))
    return samples, time.perf_counter() - started


def _summary(samples: list, elapsed: float) -> dict:
    walls = np.array([s[0] for s in samples]) * 1000
    stages = np.array([s[2] for s in samples]) * 1000
    return {"runs": len(samples), "images_per_s": round(sum(s[1] for s in samples) / elapsed, 1),
            "p50_ms": round(float(np.median(walls)), 3), "p90_ms": round(float(np.percentile(walls, 90)), 3),
            "copy_in_ms": round(float(np.median(stages[:, 0])), 3), "compute_ms": round(float(np.median(stages[:, 1])), 3),
            "copy_out_ms": round(float(np.median(stages[:, 2])), 3)}


# --- the cases --------------------------------------------------------------------------------------
def _mixed(model, inputs: dict, seconds: float) -> dict:
    from service.engine import cuda

    cycle = MIXED_CYCLE
    samples, elapsed = _repeat(lambda i: _call(model, inputs[cycle[i % len(cycle)]]), seconds, 3 * len(cycle), len(cycle))
    result = _summary(samples, elapsed)
    rungs = {}
    for i, n in enumerate(cycle):  # each size alone, at a fixed shape: what the cycle would cost without changes
        alone = _repeat(lambda _: _call(model, inputs[n]), seconds / len(cycle))[0]
        mixed = [s[0] for s in samples[i :: len(cycle)]]
        rungs[n] = {"rung": cuda.ladder_size(n), "mixed_p50_ms": round(float(np.median(mixed)) * 1000, 3),
                    "fixed_p50_ms": round(float(np.median([s[0] for s in alone])) * 1000, 3)}
    cycle_ms = sum(r["mixed_p50_ms"] for r in rungs.values())
    same_ms = sum(r["fixed_p50_ms"] for r in rungs.values())
    return {**result, "cycle_ms": round(cycle_ms, 3), "same_sizes_fixed_ms": round(same_ms, 3),
            "x_same_sizes": round(same_ms / cycle_ms, 3), "sizes": {str(n): r for n, r in rungs.items()}}


def _threads(step, seconds: float) -> dict:
    """Each call on the next of THREADS threads, one call at a time (as the service: one batch at a
    time). A ThreadPoolExecutor would not do: sequential submits all go to its one idle thread."""
    inboxes = [queue.SimpleQueue() for _ in range(THREADS)]
    outbox: queue.SimpleQueue = queue.SimpleQueue()

    def worker(inbox: queue.SimpleQueue) -> None:
        while (index := inbox.get()) is not None:
            try:
                outbox.put((step(index), threading.get_ident()))
            except BaseException as error:  # noqa: BLE001 - handed to the caller, who raises it
                outbox.put((error, None))

    workers = [threading.Thread(target=worker, args=(inbox,), daemon=True) for inbox in inboxes]
    for thread in workers:
        thread.start()
    idents = set()

    def handoff(i: int):
        inboxes[i % THREADS].put(i)
        sample, ident = outbox.get()
        if ident is None:
            raise sample
        idents.add(ident)
        return sample

    try:
        result = _summary(*_repeat(handoff, seconds, max(MIN_RUNS, 2 * THREADS)))
    finally:
        for inbox in inboxes:
            inbox.put(None)
        for thread in workers:
            thread.join()
    return {**result, "distinct_threads": len(idents)}


def _pipeline(model, config):
    from service.metrics import Metrics
    from service.engine.pipeline import ModelPipeline

    decode_pool = ThreadPoolExecutor(1, thread_name_prefix="decode")  # unused: arrays come prepared
    pipeline = ModelPipeline(model, config, decode_pool, Metrics(lambda: {}))
    return pipeline, decode_pool


async def _model_thread(model, config, batch: np.ndarray, seconds: float) -> dict:
    """ModelPipeline._run_batch, as the batcher calls it: the model's inference thread, its buffer."""
    pipeline, decode_pool = _pipeline(model, config)
    arrays = list(batch)
    samples, started = [], time.perf_counter()
    try:
        while len(samples) < MIN_RUNS or time.perf_counter() - started < seconds:
            began = time.perf_counter()
            await pipeline._run_batch(arrays)
            t = model.timings
            samples.append((time.perf_counter() - began, len(arrays), (t.copy_in, t.compute, t.copy_out)))
        return _summary(samples, time.perf_counter() - started)
    finally:
        pipeline.executor.shutdown(wait=True)
        decode_pool.shutdown(wait=True)


def _loaded(step, seconds: float, jpegs, prep, max_pixels: int, threads: int) -> dict:
    """The fixed case while `threads` threads decode the bench JPEGs, as the service's decode pool."""
    from artifact.preprocess import prepare

    if isinstance(jpegs, str):
        raise FileNotFoundError(f"no bench JPEGs to decode: {jpegs}")
    stop, decoded = threading.Event(), [0] * threads

    def decode(k: int) -> None:
        while not stop.is_set():
            prepare(jpegs[decoded[k] % len(jpegs)], prep, max_pixels)
            decoded[k] += 1

    workers = [threading.Thread(target=decode, args=(k,), daemon=True) for k in range(threads)]
    for thread in workers:
        thread.start()
    try:
        samples, elapsed = _repeat(step, seconds)
    finally:
        stop.set()
        for thread in workers:
            thread.join()
    return {**_summary(samples, elapsed), "decode_threads": threads, "decodes_per_s": round(sum(decoded) / elapsed, 1)}


def _default_session(model, config, device: str, batch: np.ndarray, seconds: float) -> dict:
    """The fixed case on a session built with ORT's defaults (no SessionOptions, no provider options)."""
    import onnxruntime as ort

    from service.engine import cuda
    from service.engine.runtime import PROVIDERS, LoadedModel, model_threads

    names = [PROVIDERS["cuda"], PROVIDERS["cpu"]] if device == "cuda" else [PROVIDERS["cpu"]]
    session = ort.InferenceSession(str(model.path), providers=names)
    card = model.card
    runner = cuda.BoundRunner(session, card.input_name, card.output_name, device, config.cuda_device_id, pad=True)
    default = LoadedModel(card, session, model.path, tuple(session.get_providers()), model.input_dtype, runner=runner)
    for _ in range(3):  # the shape's first runs: with ORT's default EXHAUSTIVE search, a cuDNN benchmark
        default.probabilities(batch)
    result = _summary(*_repeat(lambda i: _call(default, batch), seconds))
    cuda_options = lambda s: s.get_provider_options().get(PROVIDERS["cuda"], {})  # noqa: E731
    keys = ("cudnn_conv_algo_search", "arena_extend_strategy", "cudnn_conv_use_max_workspace", "do_copy_in_default_stream")
    return {**result, "providers": list(default.providers),
            "serving_cuda_options": {k: v for k, v in cuda_options(model.session).items() if k in keys},
            "default_cuda_options": {k: v for k, v in cuda_options(session).items() if k in keys},
            "serving_intra_op_threads": model_threads(config)}


async def _batcher(model, config, image: np.ndarray, seconds: float) -> dict:
    """CLIENTS one-image clients through ModelPipeline.infer: the batcher decides the batch sizes."""
    pipeline, decode_pool = _pipeline(model, config)
    samples = []
    run_batch = pipeline._infer

    def timed(arrays):  # the pipeline's own _infer, with its wall time and batch size recorded
        began = time.perf_counter()
        out = run_batch(arrays)
        t = model.timings
        samples.append((time.perf_counter() - began, len(arrays), (t.copy_in, t.compute, t.copy_out)))
        return out

    pipeline._infer = timed
    pipeline.start()
    started = time.perf_counter()

    async def client() -> None:
        while time.perf_counter() - started < seconds or len(samples) < MIN_RUNS:
            await pipeline.infer([image], None)

    try:
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        elapsed = time.perf_counter() - started
    finally:
        await pipeline.close()
        decode_pool.shutdown(wait=True)
    sizes = [s[1] for s in samples]
    return {**_summary(samples, elapsed), "mean_batch": round(float(np.mean(sizes)), 2),
            "batch_sizes": {str(n): sizes.count(n) for n in sorted(set(sizes))}}
