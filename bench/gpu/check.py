"""The GPU check: the CUDA path measured end to end in one resumable run of about 4 minutes.

    make gpu-check          # = python -m bench.gpu.check --out results/gpu
    python -m bench.gpu.check --device cpu --smoke --models DIR --skip export --out DIR   # the script itself, on the CPU

Each phase runs in a process of its own under a timeout, and results.json is written after every
phase: a rerun with the same --out skips the phases that finished (--fresh starts again).
  export    resnet18 in fp32 and fp16 (224x224, random weights: bench/models.py) with resnet-export;
  raw       ONNX Runtime through the service's sized runner (page-locked buffers, one shape at a
            time), uint8 pixels in, logits out, host to host, per batch size; fp16 with prefer_nhwc;
  diagnose  the engine variants through the service's batching loop (bench/gpu/diagnose.py);
  decode    the JPEG-decode ceiling: the bench photos decoded and preprocessed on every core;
  service   resnet-bench against resnet-serve at concurrency 1, 16, 64, 128 with pixel and photo
            payloads, once per --service-variants entry (the earlier single-session ladder included);
  train, cli-train  resnet50 training, only with --train.
Then results.json, table.md, gpu.png and log.txt in --out, with resnet-bench's files in --out/service
(eight files at most, the device tool's limit). Without a usable GPU it says so in one line and
exits 2, unless --device cpu.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.gpu import diagnose as engine
from bench.gpu.report import BATCHES, targets, write

ORDER = ("export", "raw", "diagnose", "decode", "service", "train", "cli-train")
TRAINING = ("train", "cli-train")
TIMEOUT_S = {"export": 150, "raw": 90, "diagnose": 120, "decode": 30, "service": 150, "train": 240, "cli-train": 240}
CONCURRENCY = "1,16,64,128"
# resnet-bench's payload kinds: ready uint8 pixels over the OIP binary extension, and JPEG photos.
SERVICE_PAYLOADS = "pixels,photo"
# The earlier service, for the before/after table: one session, every power of two up to 128.
OLD_BEHAVIOUR = "--cuda-sessions shared --cuda-batch-sizes " + ",".join(map(str, engine.OLD_LADDER))
SMOKE = {"batches": (1, 2, 4), "concurrency": "1,2", "seconds": 0.05, "duration_s": "0.3", "warmup_s": "0.2"}


def say(message: str, started: float = time.monotonic()) -> None:
    print(f"gpu-check [{time.monotonic() - started:5.0f} s] {message}", file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="the CUDA path measured on an NVIDIA GPU (docs/gpu.md)")
    p.add_argument("--out", type=Path, default=Path("results/gpu"))
    p.add_argument("--phase", choices=ORDER, help=argparse.SUPPRESS)
    p.add_argument("--models", type=Path, help="models folder (default OUT/../gpu-models)")
    p.add_argument("--archs", default="resnet18", help="networks to export in fp32 and fp16 (comma-separated)")
    p.add_argument("--skip", default="", help="comma-separated phases to skip: " + ",".join(ORDER))
    p.add_argument("--train", action="store_true", help="also run the training phases (skipped otherwise)")
    p.add_argument("--fresh", action="store_true", help="ignore OUT/results.json and run every phase again")
    p.add_argument("--budget-s", type=float, default=240.0, help="start no phase after this many seconds")
    p.add_argument("--concurrency", default=CONCURRENCY)
    p.add_argument("--service-models", default="resnet18-fp16,resnet18", help="models resnet-bench loads on the service")
    p.add_argument("--service-variants", default=f";{OLD_BEHAVIOUR}",
                   help="';'-separated resnet-serve flag sets, one service run each (default: the defaults, "
                        "then the earlier single-session ladder)")
    p.add_argument("--payloads", default=SERVICE_PAYLOADS, help="resnet-bench payload kinds (those it knows)")
    p.add_argument("--diagnose-models", default="resnet18-fp16,resnet18", help="models the diagnose phase runs")
    p.add_argument("--diagnose-seconds", type=float, default=1.0, help="seconds per diagnose case, half of each")
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--cli-train-steps", type=int, default=20)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: every phase on ONNX Runtime's CPU provider, to check the script without a GPU")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and durations: the script, not the figures")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from service import cuda

    if args.device == "cuda":
        gpu = cuda.probe()
        if not gpu.usable:
            print(f"gpu-check: no usable NVIDIA GPU ({gpu.reason}); nothing measured", file=sys.stderr)
            return 2
    models = args.models or args.out.parent / "gpu-models"
    if args.phase:
        print(json.dumps(PHASES[args.phase](args, models)))
        return 0
    import onnxruntime as ort

    if args.device == "cuda" and cuda.CUDA_PROVIDER not in ort.get_available_providers():
        print(f"gpu-check: onnxruntime {ort.__version__} has no CUDA provider (install onnxruntime-gpu)", file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(","))) | (set() if args.train else set(TRAINING))
    unknown = skip - set(ORDER)
    if unknown:
        print(f"gpu-check: --skip names no phase {','.join(sorted(unknown))}; phases: {','.join(ORDER)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results = _previous(args.out) if not args.fresh else None
    if results is None or results.get("meta", {}).get("device") != args.device:
        results = {"meta": _meta(args.device), "errors": {}}
    results["meta"]["runs"] = results["meta"].get("runs", 0) + 1
    started = time.monotonic()
    for phase in ORDER:
        if phase in skip:
            continue
        if phase in results and phase not in results["errors"] and phase != "service":
            say(f"{phase}: done in an earlier run, skipped")
            continue
        if time.monotonic() - started > args.budget_s:
            say(f"{phase}: not started, past --budget-s {args.budget_s:.0f}; run the same command again to go on")
            break
        phase_started = time.monotonic()
        say(f"{phase} ...")
        results["errors"].pop(phase, None)
        try:
            if phase == "service":
                _service_variants(args, models, results, started)
            else:
                results[phase] = _subprocess(phase, args, models)
        except Exception as error:  # noqa: BLE001 - one failed phase must not lose the others
            results["errors"][phase] = f"{type(error).__name__}: {error}"[-2000:]
            say(f"{phase} FAILED: {results['errors'][phase][-500:]}")
        results.setdefault("seconds", {})[phase] = round(time.monotonic() - phase_started, 1)
        write(args.out, results)  # after every phase: a run cut short keeps what it measured
    results["targets"] = targets(results)
    write(args.out, results)
    print((args.out / "table.md").read_text())
    return 0


def _previous(out: Path) -> dict | None:
    try:
        return json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return None


def _subprocess(phase: str, args, models: Path) -> dict:
    command = [sys.executable, "-m", "bench.gpu.check", "--phase", phase,
               "--out", str(args.out), "--models", str(models), "--archs", args.archs, "--device", args.device,
               "--diagnose-models", args.diagnose_models, "--diagnose-seconds", str(args.diagnose_seconds),
               "--train-steps", str(args.train_steps), "--cli-train-steps", str(args.cli_train_steps),
               *(["--smoke"] if args.smoke else [])]  # fmt: skip
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=TIMEOUT_S[phase])
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"phase {phase} passed its {TIMEOUT_S[phase]} s timeout and was killed") from None
    if done.returncode != 0:
        raise RuntimeError(f"phase {phase} exited with {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _meta(device: str) -> dict:
    gpu = "no GPU (ONNX Runtime's CPU provider)"
    if device == "cuda":
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    import onnxruntime as ort

    return {"gpu": gpu, "device": device, "onnxruntime": ort.__version__, "python": sys.version.split()[0],
            "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python -m bench.gpu.check " + " ".join(sys.argv[1:])}


# --- export -----------------------------------------------------------------------------
def export_phase(args, models: Path) -> dict:
    """Both archs in fp32 and fp16, four resnet-export runs at once (their CPU work overlaps)."""
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
    from service import cuda, sized
    from service.config import ServeConfig
    from service.runtime import PROVIDERS, discover, load_model, session_options

    batches = SMOKE["batches"] if args.smoke else BATCHES
    providers = ("cuda", "cpu") if args.device == "cuda" else ("cpu",)
    config = ServeConfig(models=models, providers=providers, max_batch_size=max(batches), cuda_sessions="shared",
                         cuda_batch_sizes=tuple(batches), sized_on_cpu=args.device == "cpu")  # fmt: skip
    seconds = 0.05 if args.smoke else 0.3
    points, parity = [], {}
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
        if args.device == "cuda" and model.card.precision == "fp16":  # tensor cores favour NHWC (ORT's prefer_nhwc)
            options = {**cuda.provider_options(0, config.cudnn_conv_algo_search), "prefer_nhwc": "1"}
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
    return {"points": points, "sized_vs_plain_max_abs_diff": parity}


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
    from service.runtime import discover
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


# --- service: resnet-bench against resnet-serve, once per variant -------------------------------------
def _service_variants(args, models: Path, results: dict, started: float) -> None:
    done = results.setdefault("service_variants", {})
    for i, variant in enumerate(args.service_variants.split(";")):
        if variant in done:
            say(f"service {variant or 'defaults'}: done in an earlier run, skipped")
            continue
        if time.monotonic() - started > args.budget_s:
            say(f"service {variant or 'defaults'}: not started, past --budget-s; run the same command again to go on")
            results["errors"]["service"] = "cut short by --budget-s: rerun to measure the remaining variants"
            break
        results["errors"].pop(f"service {variant}", None)
        try:
            done[variant] = _service(args, models, variant.split(), "service" if i == 0 else f"service-{i}")
        except Exception as error:  # noqa: BLE001 - the next variant may still run
            results["errors"][f"service {variant}"] = f"{type(error).__name__}: {error}"[-2000:]
            say(f"service {variant or 'defaults'} FAILED: {error}")
        write(args.out, results)
    if done:
        results["service"] = next(iter(done.values()))


def _service(args, models: Path, extra: list[str], folder: str) -> dict:
    from bench.payloads import KINDS

    out = args.out / folder
    served = models.parent / "gpu-models-served"
    names = [name for name in args.service_models.split(",") if (models / name / "model.onnx").is_file()]
    if not names:
        raise FileNotFoundError(f"none of {args.service_models} in {models}")
    for name in names:
        (served / name).mkdir(parents=True, exist_ok=True)
        if not (served / name / "model.onnx").exists():
            os.link(models / name / "model.onnx", served / name / "model.onnx")
    wanted = args.payloads.split(",")
    kinds = [kind for kind in wanted if kind in KINDS]
    concurrency = SMOKE["concurrency"] if args.smoke else args.concurrency
    largest = "8" if args.smoke else "128"
    serve = ["--max-batch-size", largest, "--providers", "cuda,cpu" if args.device == "cuda" else "cpu"]
    if args.device == "cpu":
        serve += ["--sized-on-cpu", "--cuda-batch-sizes", "1,8"]
    command = [sys.executable, "-m", "bench.cli", "--models", str(served), "--only", ",".join(names),
               "--payloads", ",".join(kinds), "--concurrency", concurrency,
               "--warmup-s", SMOKE["warmup_s"] if args.smoke else "0.5", "--duration-s", SMOKE["duration_s"] if args.smoke else "1.5",
               "--raw-seconds", "0.05" if args.smoke else "0.2", "--no-baseline", "--out", str(out),
               "--", *serve, *_smoke_variant(extra, args.smoke)]  # fmt: skip
    try:
        done = subprocess.run(command, stdout=subprocess.DEVNULL, timeout=TIMEOUT_S["service"])
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"resnet-bench passed its {TIMEOUT_S['service']} s timeout and was killed") from None
    if done.returncode != 0:
        raise RuntimeError(f"resnet-bench exited with {done.returncode}")
    bench = json.loads((out / "results.json").read_text())
    logs = sorted((out / "logs").glob("resnet-serve*.log"))
    head = logs[0].read_text(errors="replace").splitlines()[:40] if logs else []
    dropped = ("payloads", "models", "logs") if folder == "service" else ("payloads", "models", "logs", "table.md", "results.png")
    for file in dropped:  # keep the returned files within the device tool's limit
        subprocess.run(["rm", "-rf", str(out / file)], timeout=60)
    return {"service": bench["service"], "decode_ms": bench["decode_ms"], "raw": bench["raw"],
            "models": bench["models"], "command": " ".join(command[2:]), "serve_log_head": head,
            "payloads_missing": [kind for kind in wanted if kind not in KINDS]}


def _smoke_variant(extra: list[str], smoke: bool) -> list[str]:
    """In --smoke, batch sizes above the smoke's largest batch (8) are dropped from a variant's flags."""
    if not smoke or "--cuda-batch-sizes" not in extra:
        return extra
    at = extra.index("--cuda-batch-sizes") + 1
    sizes = sorted({min(int(n), 8) for n in extra[at].split(",")})
    return [*extra[:at], ",".join(map(str, sizes)), *extra[at + 1 :]]


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


if __name__ == "__main__":
    sys.exit(main())
