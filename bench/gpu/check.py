"""The GPU check: the CUDA path measured end to end in one resumable run of about 4 minutes.

    make gpu-check          # = python -m bench.gpu.check --out results/gpu
    python -m bench.gpu.check --device cpu --smoke --models DIR --skip export --out DIR   # the script itself, on the CPU

Each phase runs in a process of its own under a timeout, and results.json is written after every
phase: a rerun with the same --out skips the phases that finished (--fresh starts again).
  export    resnet18 in fp32 and fp16 (224x224, random weights: bench/models.py) with resnet-export;
  raw       ONNX Runtime through the service's sized runner (page-locked buffers, one shape at a
            time), uint8 pixels in, logits out, host to host, per batch size, with and without
            prefer_nhwc; and the explanations' cost and fp16-against-fp32 agreement on the sized path;
  diagnose  the engine variants through the service's batching loop (bench/gpu/diagnose.py);
  decode    the JPEG-decode ceiling: the bench photos decoded and preprocessed on every core;
  service   resnet-bench against resnet-serve at concurrency 1, 16, 64, 128 with pixel (one and
            eight images per request) and photo payloads, once per --service-variants entry (the
            earlier single-session ladder included);
  train, cli-train  resnet50 training, only with --train.
The measuring phases are in bench/gpu/phases.py. It writes results.json, table.md and gpu.png in
--out (device.sh adds log.txt), with resnet-bench's files in --out/service: eight files at most, the
device tool's limit. Without a usable GPU it says so in one line and exits 2, unless --device cpu.
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
from bench.gpu.phases import PHASES, SMOKE, TIMEOUT_S, say
from bench.gpu.report import targets, write

ORDER = ("export", "raw", "diagnose", "decode", "service", "train", "cli-train")
TRAINING = ("train", "cli-train")
CONCURRENCY = "1,16,64,128"
# resnet-bench's payload kinds: ready uint8 pixels over the OIP binary extension, and JPEG photos.
SERVICE_PAYLOADS = "pixels,pixels8,photo"
# The earlier service, for the before/after table: one session, every power of two up to 128.
OLD_BEHAVIOUR = "--cuda-sessions shared --no-cuda-prefer-nhwc --cuda-batch-sizes " + ",".join(map(str, engine.OLD_LADDER))


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
    p.add_argument("--diagnose-seconds", type=float, default=0.6, help="seconds of each half of a diagnose case")
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--cli-train-steps", type=int, default=20)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: every phase on ONNX Runtime's CPU provider, to check the script without a GPU")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and durations: the script, not the figures")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from service.engine import cuda

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
    serve = ["--providers", "cuda,cpu" if args.device == "cuda" else "cpu"]  # the batch limit: its default
    if args.device == "cpu":
        serve += ["--sized-on-cpu", "--cuda-batch-sizes", "1,8"]
    command = [sys.executable, "-m", "bench.cli", "--models", str(served), "--only", ",".join(names),
               "--payloads", ",".join(kinds), "--concurrency", concurrency,
               "--warmup-s", SMOKE["warmup_s"] if args.smoke else "0.5", "--duration-s", SMOKE["duration_s"] if args.smoke else "1",
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


if __name__ == "__main__":
    sys.exit(main())
