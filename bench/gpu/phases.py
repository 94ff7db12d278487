"""The GPU check's measuring phases, each run in a process of its own by bench/gpu/check.py:

    python -m bench.gpu.check --phase raw --models DIR --out DIR     # one phase, its JSON on stdout
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.gpu import diagnose as engine
from bench.gpu.report import BATCHES

TIMEOUT_S = {"export": 150, "raw": 90, "diagnose": 120, "decode": 30, "service": 150, "train": 240, "cli-train": 240}
SMOKE = {"batches": (1, 2, 4), "concurrency": "1,2", "seconds": 0.05, "duration_s": "0.3", "warmup_s": "0.2"}


def say(message: str, started: float = time.monotonic()) -> None:
    print(f"gpu-check [{time.monotonic() - started:5.0f} s] {message}", file=sys.stderr, flush=True)


# --- export -----------------------------------------------------------------------------
def export_phase(args, models: Path) -> dict:
    """Each of --archs in fp32 and fp16, every resnet-export run at once (their CPU work overlaps)."""
    from bench import models as bench_models

    models.mkdir(parents=True, exist_ok=True)
    checkpoints = {arch: bench_models._checkpoint(arch, models / "checkpoints" / f"{arch}.pt") for arch in args.archs.split(",")}
    jobs = {}
    for arch in args.archs.split(","):
        for precision in ("fp32", "fp16"):
            name = arch if precision == "fp32" else f"{arch}-fp16"
            if (models / name / "model.onnx").is_file():
                continue
            code = ("import sys, json; from pathlib import Path; from bench import models as m; m.EVAL_IMAGES = 100; "
                    f"print(json.dumps(m._export(Path({str(checkpoints[arch])!r}), Path({str(models)!r}), "
                    f"{name!r}, {precision!r}, lambda m: print(m, file=sys.stderr))))")
            jobs[name] = (time.monotonic(), subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True))
    report = {}
    for name, (started, job) in jobs.items():
        try:
            out, _ = job.communicate(timeout=max(1.0, TIMEOUT_S["export"] - 10 - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:  # no export left running behind a killed phase
            for _, other in jobs.values():
                other.kill()
            raise
        report[name] = {"rc": job.returncode, "seconds": round(time.monotonic() - started, 1),
                        **(json.loads(out.strip().splitlines()[-1]) if job.returncode == 0 and out.strip() else {})}
    for name in report:
        path = models / name / "model.onnx"
        report[name]["mb"] = round(path.stat().st_size / 1e6, 1) if path.is_file() else None
    return report


# --- raw ONNX Runtime: the sized runner at one batch size after another -------------------------------
def raw_phase(args, models: Path) -> dict:
    """Host-to-host img/s per batch size: page-locked input filled, copied, run, logits copied back."""
    import numpy as np
    import onnxruntime as ort

    from artifact.preprocess import random_batch
    from service.engine import sized
    from service.engine import cuda
    from service.config import ServeConfig
    from service.engine.runtime import PROVIDERS, discover, load_model, session_options

    batches = SMOKE["batches"] if args.smoke else BATCHES
    providers = ("cuda", "cpu") if args.device == "cuda" else ("cpu",)
    # The rows without a suffix run NCHW (prefer_nhwc off, the layout before it became the default);
    # the "prefer_nhwc" rows run the service's default layout.
    config = ServeConfig(models=models, providers=providers, max_batch_size=max(batches), cuda_sessions="shared",
                         cuda_batch_sizes=tuple(batches), sized_on_cpu=args.device == "cpu",
                         cuda_prefer_nhwc=False)  # fmt: skip
    seconds = 0.05 if args.smoke else 0.3
    points, parity, explain = [], {}, {}
    for path in discover(models):
        model = load_model(path, config)
        name, prep = model.name, model.card.preprocessing
        if model.device != args.device:
            raise RuntimeError(f"{name}: ONNX Runtime did not place it on {args.device}: {model.providers}")
        probe = random_batch(prep, min(8, max(batches)), seed=0)
        (plain,) = model.session.run([model.card.output_name], {model.card.input_name: probe.astype(model.input_dtype)})
        parity[name] = float(np.abs(model.runner.run(probe).astype(np.float32) - plain.astype(np.float32)).max())
        say(f"raw {name}: sized runner vs session.run max |diff| {parity[name]:.2e}, pinned {model.runner.pinned}")
        variants = {"": model.runner}
        if args.device == "cuda":  # tensor cores favour NHWC (ORT's prefer_nhwc, the service's default)
            options = cuda.provider_options(0, config.cudnn_conv_algo_search, nhwc=True)
            nhwc = ort.InferenceSession(str(path), sess_options=session_options(config),
                                        providers=[(PROVIDERS["cuda"], options)])
            variants["prefer_nhwc"] = sized.SizedRunner(dict.fromkeys(batches, nhwc), model.card.input_name,
                                                        model.card.output_name, "cuda")
        for variant, runner in variants.items():
            for batch in batches:
                points.append(_raw_point(runner, random_batch(prep, batch, seed=batch), seconds,
                                         {"model": name + (f" {variant}" if variant else ""),
                                          "precision": model.card.precision, "batch": batch}))
                say(f"raw {points[-1]['model']} batch {batch}: {points[-1]['images_per_s']:.0f} img/s host to host, "
                    f"{points[-1]['compute_images_per_s']:.0f} compute only")
        del model, variants
        explain[name] = _explain_costs(path, providers, args, seconds)
    return {"points": points, "sized_vs_plain_max_abs_diff": parity, "explain": _explain_report(explain)}


EXPLAIN_BATCHES = (1, 8, 64)


def _explain_costs(path: Path, providers: tuple[str, ...], args, seconds: float) -> dict:
    """The model as the service loads it by default (per-size sessions, its layout, the explanation
    outputs bound per size): ms per batch classifying alone and with every explanation copied out,
    and the explanations of one probe batch, for the fp16-against-fp32 comparison."""
    import numpy as np

    from artifact.preprocess import random_batch
    from service.config import ServeConfig
    from service.engine.runtime import load_model

    batches = (1, 2) if args.smoke else EXPLAIN_BATCHES
    config = ServeConfig(models=path.parent.parent, providers=providers, cuda_batch_sizes=batches,
                         sized_on_cpu=args.device == "cpu")  # fmt: skip
    model = load_model(path, config)
    if model.runner is None or not model.runner.extras:
        return {"bound": False}
    prep = model.card.preprocessing
    costs = {}
    for batch in batches:
        pixels = random_batch(prep, batch, seed=batch)
        for label, call in (("classify_ms", model.probabilities), ("explain_ms", model.explain)):
            for _ in range(3):
                call(pixels)
            walls, deadline = [], time.perf_counter() + seconds / 2
            while len(walls) < 5 or time.perf_counter() < deadline:
                started = time.perf_counter()
                call(pixels)
                walls.append(time.perf_counter() - started)
            costs.setdefault(str(batch), {})[label] = round(float(np.median(walls)) * 1000, 3)
    probe = model.explain(random_batch(prep, batches[-1], seed=0))
    return {"bound": True, "costs": costs, "probe": {k: v.tolist() for k, v in probe.items()}}


def _explain_report(explain: dict) -> dict:
    """Costs per model, and each fp16 model's maps and embeddings against its fp32 twin's on the probe."""
    import numpy as np

    report = {name: {k: v for k, v in e.items() if k != "probe"} for name, e in explain.items()}
    for name, e in explain.items():
        twin = explain.get(name.removesuffix("-fp16")) if name.endswith("-fp16") else None
        if not (e.get("probe") and twin and twin.get("probe")):
            continue
        half, full = ({k: np.asarray(v) for k, v in x["probe"].items()} for x in (e, twin))
        diffs, peaks, compared = [], 0, 0
        for i, classes in enumerate(full["cam_classes"]):
            top = int(classes[0])
            where = np.flatnonzero(half["cam_classes"][i] == top)
            if not len(where):
                continue
            a, b = full["cam"][i, 0], half["cam"][i, int(where[0])]
            a, b = ((m - m.min()) / max(float(m.max() - m.min()), 1e-12) for m in (a, b))
            diffs.append(float(np.abs(a - b).max()))
            peaks += int(a.argmax() == b.argmax())
            compared += 1
        ea, eb = full["embedding"], half["embedding"]
        cosine = (ea * eb).sum(1) / np.maximum(np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1), 1e-12)
        report[name]["against_fp32"] = {
            "images": len(full["cam_classes"]), "maps_compared": compared,
            "map_max_abs_diff_normalised": round(max(diffs), 4) if diffs else None,
            "map_peak_agreement": round(peaks / compared, 4) if compared else None,
            "embedding_cosine_min": round(float(cosine.min()), 6),
        }  # fmt: skip
    return report


def _raw_point(runner, batch, seconds: float, point: dict) -> dict:
    import numpy as np

    for _ in range(3):  # a shape's first runs: cuDNN's algorithm choice, the arena
        runner.run(batch)
    walls, stages, deadline = [], [], time.perf_counter() + seconds
    while len(walls) < 5 or time.perf_counter() < deadline:
        started = time.perf_counter()
        runner.run(batch)
        walls.append(time.perf_counter() - started)
        t = runner.timings
        stages.append((t.copy_in, t.compute, t.copy_out))
    wall = float(np.median(walls))
    copy_in, compute, copy_out = (float(np.median([s[i] for s in stages])) for i in range(3))
    n = len(batch)
    return {**point, "runs": len(walls), "images_per_s": round(n / wall, 1), "compute_images_per_s": round(n / compute, 1),
            "p50_ms": round(wall * 1000, 3), "copy_in_ms": round(copy_in * 1000, 3),
            "compute_ms": round(compute * 1000, 3), "copy_out_ms": round(copy_out * 1000, 3)}


# --- diagnose: the engine variants through the service's batching loop (bench/gpu/diagnose.py) -------
def diagnose_phase(args, models: Path) -> dict:
    seconds = SMOKE["seconds"] if args.smoke else args.diagnose_seconds
    names = [name for name in args.diagnose_models.split(",") if (models / name / "model.onnx").is_file()]
    if not names:
        raise FileNotFoundError(f"none of {args.diagnose_models} in {models}")
    return engine.diagnose(models, names, args.device, seconds, args.smoke, log=lambda m: say(f"diagnose {m}"))


# --- decode: the JPEG-decode ceiling of this machine's cores ------------------------------------------------
def decode_phase(args, models: Path) -> dict:
    """The bench photos decoded and preprocessed (as resnet18's card asks) on one thread per core."""
    import tempfile
    import threading

    from artifact import ModelCard
    from artifact.preprocess import prepare
    from bench import payloads
    from service.config import available_cpus
    from service.engine.runtime import discover
    import onnxruntime as ort

    path = discover(models)[0]
    prep = ModelCard.from_metadata(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                                   .get_modelmeta().custom_metadata_map).preprocessing  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        photos = [p.read_bytes() for p in payloads.build(Path(folder), ("photo",))["photo"]]
    threads, seconds = available_cpus(), 0.2 if args.smoke else 3.0
    counts, stop = [0] * threads, threading.Event()

    def work(k: int) -> None:
        while not stop.is_set():
            prepare(photos[counts[k] % len(photos)], prep, 50_000_000)
            counts[k] += 1

    workers = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    return {"threads": threads, "seconds": round(elapsed, 2), "images_per_s": round(sum(counts) / elapsed, 1),
            "per_thread_images_per_s": round(sum(counts) / elapsed / threads, 1), "model": path.parent.name,
            "photo_bytes": [len(p) for p in photos]}


# --- training (only with --train) -----------------------------------------------------------------------------
def train_phase(args, models: Path) -> dict:
    """resnet50, bf16 autocast, channels-last, SGD, on a batch of real synthetic images kept on the GPU."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from multiprocessing import Pool

    from training import models as nets, synthetic

    batch, steps = 256, args.train_steps
    with Pool(min(16, os.cpu_count() or 1)) as pool:
        rendered = pool.starmap(synthetic.render, [(0, "train", i, 224) for i in range(batch)])
    images = torch.from_numpy(np.stack([image for image, _ in rendered])).permute(0, 3, 1, 2).float().div(255)
    images = ((images - 0.5) / 0.25).cuda().contiguous(memory_format=torch.channels_last)
    labels = torch.tensor([label for _, label in rendered]).cuda()
    model = nets.build("resnet50", len(synthetic.CLASSES), zero_init_residual=True).cuda()
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    torch.backends.cudnn.benchmark = True

    def step() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(15):
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if not torch.isfinite(loss):
        raise FloatingPointError("loss is not finite")
    return {"arch": "resnet50", "batch": batch, "steps": steps, "seconds": round(seconds, 2),
            "images_per_s": round(batch * steps / seconds, 1), "final_loss": round(float(loss), 4),
            "torch": torch.__version__, "settings": "bf16 autocast, channels-last, SGD momentum 0.9, cudnn.benchmark"}


def cli_train_phase(args, models: Path) -> dict:
    """resnet-train itself: the whole pipeline, the synthetic images rendered by DataLoader workers."""
    out = models.parent / "gpu-train"
    command = [sys.executable, "-m", "training.cli", "--arch", "resnet50", "--data", "synthetic", "--amp",
               "--amp-dtype", "bf16", "--channels-last", "--batch-size", "256", "--max-steps", str(args.cli_train_steps),
               "--workers", str(max(1, (os.cpu_count() or 2) - 1)), "--train-size", str(256 * args.cli_train_steps),
               "--val-size", "256", "--log-every", "5", "--out", str(out)]
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=240)
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [e["img_per_s"] for e in events if e.get("event") == "train"]
    return {"command": " ".join(["resnet-train", *command[3:]]), "seconds": round(time.monotonic() - started, 1),
            "img_per_s_windows": [round(w, 1) for w in windows], "images_per_s": round(max(windows), 1) if windows else None}


PHASES = {"export": export_phase, "raw": raw_phase, "diagnose": diagnose_phase, "decode": decode_phase,
          "train": train_phase, "cli-train": cli_train_phase}
