"""The device check: the GPU path measured end to end in one run of a few minutes, on an NVIDIA GPU.

    python -m bench.gpu_check --out results/gpu          # or: make gpu-check

In order, each phase in a process of its own (a crash in one leaves the others' results):
  1. export: resnet18 and resnet152 (224x224, random weights, speed only: bench/models.py) in fp32
     and fp16 with resnet-export, whose fp16 gate runs on the GPU (export/verify.fp16_providers);
  2. raw: ONNX Runtime's CUDA provider through the service's own runtime (service/engine/runtime.py, I/O
     binding), batch 1 to 256 per model: host-to-host img/s, the device's compute-only img/s, the
     copy times, and the bound path's outputs against a plain session.run;
  3. diagnose: the service's own runtime objects without HTTP, one suspect changed at a time (fixed
     batch, mixed batch sizes, calls from many threads, the pipeline's model thread, decoding load,
     ORT's default session, the batcher): where the service's GPU time goes (bench/gpu_diagnose.py);
  4. service: resnet-bench against resnet-serve on CUDA at concurrency 1 to 256 (its own folder);
  5. train: resnet50 with bf16 autocast and channels-last, SGD, on a GPU-resident synthetic batch
     (the model's training speed), then resnet-train itself for a few steps (the whole pipeline,
     data loading included);
then results.json, table.md and gpu.png in --out (with resnet-bench's three files in --out/service,
and log.txt: eight files at most, the device tool's limit). Without a usable GPU it says so in one
line and exits 2; `--device cpu` runs the diagnose phase alone on the CPU provider (its test).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import gpu_diagnose
from bench.gpu_report import ARCHS, BATCHES, targets, write

CONCURRENCY = "1,4,16,64,128,256"
ORDER = ("export", "raw", "diagnose", "service", "train", "cli-train")
# The targets (docs/gpu.md): measured on the device in one run; reported, not asserted.


def say(message: str, started: float = time.monotonic()) -> None:
    print(f"gpu-check [{time.monotonic() - started:5.0f} s] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    global ARCHS
    p = argparse.ArgumentParser(description="the GPU path measured on an NVIDIA GPU (docs/gpu.md)")
    p.add_argument("--out", type=Path, default=Path("results/gpu"))
    p.add_argument("--phase", choices=("export", "raw", "diagnose", "train", "cli-train"), help=argparse.SUPPRESS)
    p.add_argument("--models", type=Path, help="models folder (default OUT/../gpu-models)")
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--cli-train-steps", type=int, default=20)
    p.add_argument("--concurrency", default=CONCURRENCY)
    p.add_argument("--service-models", default="resnet18-fp16,resnet18", help="models resnet-bench loads on the service")
    p.add_argument("--archs", default=",".join(ARCHS), help="networks to export and measure (default both)")
    p.add_argument("--service-variants", default="",
                   help="';'-separated extra resnet-serve flag sets, one service run each (default: one run, no extras)")
    p.add_argument("--skip", default="", help="comma-separated phases to skip: " + ",".join(ORDER))
    p.add_argument("--diagnose-models", default="resnet18-fp16,resnet18", help="models the diagnose phase runs")
    p.add_argument("--diagnose-seconds", type=float, default=0.5, help="seconds per diagnose case and model")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: the diagnose phase alone, on ONNX Runtime's CPU provider (a test without a GPU)")
    args = p.parse_args(argv)
    from service.engine import cuda

    skip = set(filter(None, args.skip.split(",")))
    if args.device == "cpu":
        others = [phase for phase in ORDER if phase not in skip and phase != "diagnose"]
        if others and args.phase in (None, *others):
            print(f"gpu-check: --device cpu runs only the diagnose phase; add --skip {','.join(others)}", file=sys.stderr)
            return 2
    else:
        gpu = cuda.probe()
        if not gpu.usable:
            print(f"gpu-check: no usable NVIDIA GPU ({gpu.reason}); nothing measured", file=sys.stderr)
            return 2
    models = args.models or args.out.parent / "gpu-models"
    ARCHS = tuple(args.archs.split(","))
    if args.phase:
        result = PHASES[args.phase](args, models)
        print(json.dumps(result))
        return 0
    import onnxruntime as ort

    if args.device == "cuda" and cuda.CUDA_PROVIDER not in ort.get_available_providers():
        print(f"gpu-check: onnxruntime {ort.__version__} has no CUDA provider (install onnxruntime-gpu)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"meta": _meta(args.device), "errors": {}}
    for phase in ORDER:
        if phase in skip:
            continue
        started = time.monotonic()
        say(f"{phase} ...")
        try:
            if phase == "service" and args.service_variants:
                results["service_variants"] = {}
                for i, variant in enumerate(args.service_variants.split(";")):
                    try:
                        results["service_variants"][variant] = _service(args, models, variant.split(), f"service-{i}")
                    except Exception as error:  # noqa: BLE001 - the next variant may still run
                        results["errors"][f"service {variant}"] = f"{type(error).__name__}: {error}"[-2000:]
                    write(args.out, results)
                results[phase] = next(iter(results["service_variants"].values()))
            else:
                results[phase] = _service(args, models) if phase == "service" else _subprocess(phase, args, models)
        except Exception as error:  # noqa: BLE001 - one failed phase must not lose the others
            results["errors"][phase] = f"{type(error).__name__}: {error}"[-2000:]
            say(f"{phase} FAILED: {results['errors'][phase][-500:]}")
        results.setdefault("seconds", {})[phase] = round(time.monotonic() - started, 1)
        write(args.out, results)  # after every phase: a run cut short keeps what it measured
    results["targets"] = targets(results)
    write(args.out, results)
    print((args.out / "table.md").read_text())
    return 0


def _subprocess(phase: str, args, models: Path) -> dict:
    command = [sys.executable, "-m", "bench.gpu_check", "--phase", phase, "--out", str(args.out),
               "--models", str(models), "--train-steps", str(args.train_steps),
               "--cli-train-steps", str(args.cli_train_steps), "--archs", args.archs, "--device", args.device,
               "--diagnose-models", args.diagnose_models, "--diagnose-seconds", str(args.diagnose_seconds),
               "--skip", args.skip]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"phase {phase} exited with {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _meta(device: str) -> dict:
    gpu = "no GPU (ONNX Runtime's CPU provider)"
    if device == "cuda":
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    import onnxruntime as ort

    return {"gpu": gpu, "onnxruntime": ort.__version__, "python": sys.version.split()[0],
            "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python -m bench.gpu_check " + " ".join(sys.argv[1:])}


# --- phase 1: export -----------------------------------------------------------------------------
def export_phase(args, models: Path) -> dict:
    """Both archs in fp32 and fp16, four resnet-export runs at once (their CPU work overlaps)."""
    from bench import models as bench_models

    models.mkdir(parents=True, exist_ok=True)
    checkpoints = {arch: bench_models._checkpoint(arch, models / "checkpoints" / f"{arch}.pt") for arch in ARCHS}
    jobs = {}
    for arch in ARCHS:
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
        out, _ = job.communicate()
        report[name] = {"rc": job.returncode, "seconds": round(time.monotonic() - started, 1),
                        **(json.loads(out.strip().splitlines()[-1]) if job.returncode == 0 and out.strip() else {})}
    for name in report:
        path = models / name / "model.onnx"
        report[name]["mb"] = round(path.stat().st_size / 1e6, 1) if path.is_file() else None
    return report


# --- phase 2: raw ONNX Runtime on CUDA -------------------------------------------------------------
def raw_phase(args, models: Path) -> dict:
    import numpy as np

    from service.config import ServeConfig
    from service.engine.runtime import discover, load_model

    config = ServeConfig(models=models, providers=("cuda", "cpu"), max_batch_size=max(BATCHES))
    points, parity = [], {}
    for path in discover(models):
        model = load_model(path, config)
        name, side = model.name, model.card.preprocessing.input_size
        if model.device != "cuda":
            raise RuntimeError(f"{name}: ONNX Runtime did not place it on CUDA: {model.providers}")
        rng = np.random.default_rng(0)
        probe = rng.standard_normal((8, 3, side, side), dtype=np.float32)
        (plain,) = model.session.run([model.card.output_name], {model.card.input_name: probe.astype(model.input_dtype)})
        bound = model.runner.run(probe)
        parity[name] = float(np.abs(bound.astype(np.float32) - plain.astype(np.float32)).max())
        say(f"raw {name}: bound vs session.run max |diff| {parity[name]:.2e}")
        for batch in BATCHES:
            inputs = [rng.standard_normal((batch, 3, side, side), dtype=np.float32) for _ in range(2)]
            for i in range(3):  # first runs of a shape: cuDNN's algorithm search, allocation
                model.runner.run(inputs[i % 2])
            walls, stages, deadline = [], [], time.perf_counter() + 0.3
            while len(walls) < 5 or time.perf_counter() < deadline:
                started = time.perf_counter()
                model.runner.run(inputs[len(walls) % 2])
                walls.append(time.perf_counter() - started)
                t = model.runner.timings
                stages.append((t.copy_in, t.compute, t.copy_out))
            wall = float(np.median(walls))
            copy_in, compute, copy_out = (float(np.median([s[i] for s in stages])) for i in range(3))
            point = {"model": name, "precision": model.card.precision, "batch": batch, "runs": len(walls),
                     "images_per_s": round(batch / wall, 1), "compute_images_per_s": round(batch / compute, 1),
                     "p50_ms": round(wall * 1000, 3), "copy_in_ms": round(copy_in * 1000, 3),
                     "compute_ms": round(compute * 1000, 3), "copy_out_ms": round(copy_out * 1000, 3)}
            say(f"raw {name} batch {batch}: {point['images_per_s']:.0f} img/s host-to-host, "
                f"{point['compute_images_per_s']:.0f} compute-only")
            points.append(point)
        del model
    return {"points": points, "bound_vs_plain_max_abs_diff": parity}


# --- phase 3: diagnose, the service's runtime objects without HTTP (bench/gpu_diagnose.py) -----------
def diagnose_phase(args, models: Path) -> dict:
    names = args.diagnose_models.split(",")
    return gpu_diagnose.diagnose(models, names, args.device, args.diagnose_seconds)


# --- phase 4: the service under resnet-bench ------------------------------------------------------
def _service(args, models: Path, extra: list[str] = (), folder: str = "service") -> dict:
    out = args.out / folder
    # resnet-serve warms every model at every rung of the batch ladder: resnet18 alone starts quickly.
    served = models.parent / "gpu-models-served"
    for name in args.service_models.split(","):
        (served / name).mkdir(parents=True, exist_ok=True)
        if not (served / name / "model.onnx").exists():
            os.link(models / name / "model.onnx", served / name / "model.onnx")
    command = [sys.executable, "-m", "bench.cli", "--models", str(served), "--only", args.service_models,
               "--payloads", "photo", "--concurrency", args.concurrency, "--warmup-s", "1", "--duration-s", "3", "--raw-seconds", "0.3",
               "--no-baseline", "--out", str(out), "--", "--max-batch-size", "128", "--providers", "cuda,cpu", *extra]
    done = subprocess.run(command, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"resnet-bench exited with {done.returncode}")
    bench = json.loads((out / "results.json").read_text())
    logs = sorted((out / "logs").glob("resnet-serve*.log"))
    head = logs[0].read_text(errors="replace").splitlines()[:40] if logs else []
    dropped = ("payloads", "models", "logs") if folder == "service" else ("payloads", "models", "logs", "table.md", "results.png")
    for file in dropped:  # keep the returned files within the device tool's limit
        subprocess.run(["rm", "-rf", str(out / file)])
    return {"service": bench["service"], "decode_ms": bench["decode_ms"], "raw": bench["raw"],
            "models": bench["models"], "command": " ".join(command[2:]), "serve_log_head": head}


# --- phase 5: training -----------------------------------------------------------------------------
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


PHASES = {"export": export_phase, "raw": raw_phase, "diagnose": diagnose_phase, "train": train_phase,
          "cli-train": cli_train_phase}


if __name__ == "__main__":
    sys.exit(main())
