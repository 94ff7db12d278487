"""The GPU check's diagnose phase: the engine variants through the service's own batching loop.

    python -m bench.gpu.check --skip export,raw,service,decode --out results/gpu     # or: make gpu-check
    python -m bench.gpu.check --device cpu --smoke --models DIR --out DIR            # the script, on the CPU

Each case loads the model with service.engine.runtime.load_model and one setting changed, then drives
service.engine.pipeline.ModelPipeline: its batcher and its single inference thread, no HTTP, no decoding.
Batches of the sizes in CYCLE follow one another (the shape changes every batch, as under a real
load), then CLIENTS one-image clients let the batcher choose. Every batch's wall time and
time.thread_time() of the inference thread are recorded: CPU time close to wall time means the host
was busy (building cuDNN plans, say), not waiting for the GPU.

| case | sessions | sizes |
| --- | --- | --- |
| old_ladder | one session for every size, NCHW (the earlier service) | 1, 2, 4, ..., 128 |
| per_size | one session per size (the service's default) | --cuda-batch-sizes' default |
| coarse | one session per size, fewer sizes (the first guess) | 1, 8, 32, 128 |
| single_size | one session, every batch padded to one size | 128 |
| graphs | one session per size, each replaying its CUDA graph | as per_size |
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CYCLE = (16, 3, 64, 7, 128, 1, 32)  # batch sizes changing every batch, as a batcher under load
CLIENTS = 64  # one-image clients of the batcher half of each case
OLD_LADDER = (1, 2, 4, 8, 16, 32, 64, 128)
CASES = {  # name -> ServeConfig settings changed against the default
    "old_ladder": {"cuda_sessions": "shared", "cuda_batch_sizes": OLD_LADDER, "cuda_prefer_nhwc": False},
    "per_size": {},
    "coarse": {"cuda_batch_sizes": (1, 8, 32, 128)},
    "single_size": {"cuda_batch_sizes": (128,)},
    "graphs": {"cuda_graphs": True},
}


def cudnn_version() -> str | None:
    """cuDNN's version as the loaded library reports it (ORT loads it for its CUDA provider); None without one."""
    for name in ("libcudnn.so.9", "libcudnn.so.8", "libcudnn.so"):
        try:
            version = ctypes.CDLL(name).cudnnGetVersion()
        except (OSError, AttributeError):
            continue
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}" if version >= 10000 else str(version)
    return None


def diagnose(models: Path, names: list[str], device: str, seconds: float, smoke: bool = False, log=print) -> dict:
    """Every case for each named model in `models` (NAME/model.onnx), on `device` ("cuda" or "cpu")."""
    found = {path.parent.name: path for path in sorted(models.glob("*/model.onnx"))}
    missing = [name for name in names if name not in found]
    if missing:
        raise FileNotFoundError(f"no {', '.join(missing)} in {models} (it has {', '.join(found) or 'nothing'})")
    cycle = tuple(min(n, 8) for n in CYCLE) if smoke else CYCLE
    report = {name: _model(found[name], device, seconds, cycle, smoke, log) for name in names}
    return {"device": device, "seconds_per_case": seconds, "cycle": list(cycle), "clients": CLIENTS,
            "cudnn": cudnn_version(), "models": report}


def _config(path: Path, device: str, smoke: bool, **changes):
    from service.config import ServeConfig

    largest = 8 if smoke else 128
    settings = {"cuda_batch_sizes": (1, 8) if smoke else ServeConfig.__dataclass_fields__["cuda_batch_sizes"].default,
                **changes}
    if smoke:  # the same variants at sizes a CPU runs in a moment
        settings["cuda_batch_sizes"] = tuple(sorted({min(s, largest) for s in settings["cuda_batch_sizes"]}))
    return ServeConfig(models=path.parent.parent, providers=("cuda", "cpu") if device == "cuda" else ("cpu",),
                       max_batch_size=largest, queue_size=4 * max(largest, CLIENTS), sized_on_cpu=device == "cpu",
                       **settings)  # fmt: skip


def _model(path: Path, device: str, seconds: float, cycle: tuple[int, ...], smoke: bool, log) -> dict:
    from service.engine.runtime import load_model

    cases = {}
    for case, changes in CASES.items():
        if case == "graphs" and device != "cuda":
            cases[case] = {"skipped": "CUDA graphs need the CUDA provider"}
            continue
        try:
            config = _config(path, device, smoke, **changes)
            started = time.perf_counter()
            model = load_model(path, config)
            load_s = time.perf_counter() - started
            if model.device != device:
                raise RuntimeError(f"{model.name}: ONNX Runtime runs it on {model.providers}, not on {device}")
            cases[case] = {**asyncio.run(_drive(model, config, cycle, seconds)), "load_s": round(load_s, 2),
                           "sizes": list(model.runner.sizes), "shared": model.runner.shared,
                           "graphs": model.runner.graphs, "pinned": model.runner.pinned,
                           "device_memory_mib": None if model.device_memory_bytes is None
                           else round(model.device_memory_bytes / 2**20, 1)}  # fmt: skip
            r = cases[case]
            log(f"{path.parent.name} {case}: cycle {r['cycle']['images_per_s']:.0f} img/s "
                f"(p50 {r['cycle']['p50_ms']:.2f} ms, cpu/wall {r['cycle']['cpu_over_wall']:.2f}), "
                f"clients {r['clients']['images_per_s']:.0f} img/s (mean batch {r['clients']['mean_batch']:.1f})")
            del model
        except Exception as error:  # noqa: BLE001 - one failed case must not lose the others
            cases[case] = {"error": f"{type(error).__name__}: {error}"[-1000:]}
            log(f"{path.parent.name} {case}: {cases[case]['error'][:300]}")
    base = cases.get("old_ladder", {}).get("cycle", {}).get("images_per_s")
    for case in cases.values():
        if base and "cycle" in case:
            case["x_old_ladder"] = round(case["cycle"]["images_per_s"] / base, 3)
    return {"cases": cases}


async def _drive(model, config, cycle: tuple[int, ...], seconds: float) -> dict:
    """The model's pipeline: warm-up as the service does it, then the cycle, then the clients."""
    from artifact.preprocess import random_batch
    from service.metrics import Metrics
    from service.engine.pipeline import ModelPipeline

    decode_pool = ThreadPoolExecutor(1, thread_name_prefix="decode")  # unused: arrays come prepared
    pipeline = ModelPipeline(model, config, decode_pool, Metrics(lambda: {}))
    records: list[tuple[int, float, float]] = []  # (batch size, wall s, inference-thread CPU s)
    infer = pipeline._infer

    def timed(arrays):  # the pipeline's own _infer, on its inference thread, with its costs recorded
        wall, cpu = time.perf_counter(), time.thread_time()
        out = infer(arrays)
        records.append((len(arrays), time.perf_counter() - wall, time.thread_time() - cpu))
        return out

    pipeline._infer = timed
    pipeline.start()
    prep = model.card.preprocessing
    images = {n: list(random_batch(prep, n, seed=n)) for n in set(cycle)}
    try:
        await pipeline.warm_up()
        records.clear()
        started = time.perf_counter()
        while time.perf_counter() - started < seconds or len(records) < 2 * len(cycle):
            for n in cycle:  # one submit of n images: the batcher runs it as one batch of n
                await pipeline.infer(images[n], None)
        cycle_result = _summary(records, time.perf_counter() - started, cycle)
        records.clear()
        started = time.perf_counter()

        async def client() -> None:
            while time.perf_counter() - started < seconds:
                await pipeline.infer(images[1][:1], None)

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        clients_result = _summary(records, time.perf_counter() - started, None)
    finally:
        await pipeline.close()
        decode_pool.shutdown(wait=True)
    return {"cycle": cycle_result, "clients": clients_result}


def _summary(records: list[tuple[int, float, float]], elapsed: float, cycle) -> dict:
    sizes = np.array([r[0] for r in records])
    wall = np.array([r[1] for r in records]) * 1000
    cpu = np.array([r[2] for r in records]) * 1000
    result = {"batches": len(records), "images_per_s": round(float(sizes.sum()) / elapsed, 1),
              "mean_batch": round(float(sizes.mean()), 2), "p50_ms": round(float(np.median(wall)), 3),
              "p90_ms": round(float(np.percentile(wall, 90)), 3), "cpu_p50_ms": round(float(np.median(cpu)), 3),
              "cpu_over_wall": round(float(cpu.sum() / wall.sum()), 3)}  # fmt: skip
    # The first batches as they came, [size, wall ms, inference-thread CPU ms]: the raw record behind the medians.
    result["first_batches"] = [[int(n), round(float(w), 3), round(float(c), 3)] for n, w, c in zip(sizes, wall, cpu)][:70]
    if cycle is not None:  # each size's median: which sizes pay, and whether the host pays it
        result["per_size"] = {str(n): {"p50_ms": round(float(np.median(wall[sizes == n])), 3),
                                       "cpu_p50_ms": round(float(np.median(cpu[sizes == n])), 3)}
                              for n in cycle}  # fmt: skip
    return result
