"""Reproduce the evidence of He et al., "Deep Residual Learning for Image Recognition" (arXiv
1512.03385) with this training package, from one command:

    resnet-train paper --scale small --out results/paper        # one CPU core (docs/paper.md)
    resnet-train paper --scale paper --out results/paper-cifar  # CIFAR-10, sec. 4.2's recipe, a GPU

1. Degradation (Fig. 1 and 6): plain and residual nets of 20, 56 and 110 layers,
   one recipe for all, training and test error curves.
2. Gradient flow: the gradient norm reaching each layer at initialisation and after training, for
   depths 20 ... 1202, and the first steps of a 1202-layer residual and plain net.
3. Response magnitudes (Fig. 7): std of each 3x3 layer's output after its BN.
4. Shortcut options A, B, C (Table 3) on the ImageNet resnet34.

Each run writes <out>/runs/<name>.json when it ends; a finished run is skipped and an interrupted
one continues from its state file, so rerunning the command resumes. The report (<out>/report.md and
its PNGs, training.paper.report) is rewritten after every run, so it always shows what exists.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from artifact import depth_of
from training.config import TrainConfig, resolve
from training.paper import runs as paper_runs
from training.paper.runs import Run


@dataclass(frozen=True)
class Scale:
    name: str
    data: str  # data of experiments 1-3 (a name in training.paper.runs.DATASETS)
    shortcut_data: str  # data of experiment 4
    size: int  # input side in pixels
    max_steps: int  # SGD steps of every training run
    batch: int  # images per step
    lr: float  # peak lr (0.1 at batch 128, sec. 4.2, scaled linearly with the batch)
    lr_milestones: tuple[int, ...]  # lr / 10 at these steps
    warmup_steps: int  # steps at lr/10 for nets of 110+ layers (sec. 4.2)
    seeds: tuple[int, ...]  # every training run is repeated with each seed
    degradation: tuple[str, ...]  # archs of experiment 1 (their runs also feed 2 and 3)
    probe_only: tuple[str, ...]  # archs probed at initialisation only
    deep: tuple[str, ...]  # archs of the first-steps run
    deep_steps: int  # steps of the first-steps run
    deep_batch: int  # its batch
    shortcut_arch: str  # the ImageNet ResNet of experiment 4
    eval_every: int  # steps between test evaluations
    save_every: int  # steps between resumable state files (0: none)


def _paper_recipe() -> TrainConfig:
    """Sec. 4.2's recipe as training.config resolves it for CIFAR-10's 45k training images."""
    return resolve(TrainConfig(arch="resnet20", data="cifar10"), 45000, 1)


def paper_scale() -> Scale:
    """CIFAR-10 at 32 px: 64k steps of 128, lr 0.1 / 10 at 32k and 48k, wd 1e-4, momentum 0.9."""
    recipe = _paper_recipe()
    return Scale("paper", "cifar10", "cifar10", 32, recipe.max_steps, recipe.batch_size, recipe.lr,
                 recipe.lr_milestones, resolve(replace(recipe, arch="resnet110", warmup_steps=-1), 45000, 1).warmup_steps,
                 (0, 1, 2), ("plain20", "plain56", "plain110", "resnet20", "resnet56", "resnet110"),
                 (), ("resnet1202", "plain1202"), 100, 128, "resnet34", 1000, 2000)


# The small scale: the digits at 16 px (half the paper's side, a quarter of its cost) and the paper's
# recipe shrunk to 200 steps of 32 (lr scaled linearly: 0.025), decays at the same fractions.
SMALL = Scale("small", "digits", "synthetic", 16, 200, 32, 0.025, (100, 150), 20, (0, 1, 2),
              ("plain20", "plain56", "plain110", "resnet20", "resnet56", "resnet110"), (),
              ("resnet1202", "plain1202"), 20, 16, "resnet34", 25, 0)
SCALES = {"small": lambda: SMALL, "paper": paper_scale}


def plan(scale: Scale) -> list[Run]:
    """Every run, in the order that makes a partial report most useful: every experiment on the first
    seed, then the other seeds of experiment 1, then those of experiment 4."""
    def run(name: str, arch: str, seed: int, **changes) -> Run:
        warmup = scale.warmup_steps if depth_of(arch) >= 110 else 0
        base = dict(name=f"{name}-{arch}-s{seed}", arch=arch, data=scale.data, size=scale.size, seed=seed,
                    max_steps=scale.max_steps, batch=scale.batch, lr=scale.lr, lr_milestones=scale.lr_milestones,
                    warmup_steps=warmup, eval_every=scale.eval_every, save_every=scale.save_every)
        return Run(**{**base, **changes})

    def shortcuts(seed: int) -> list[Run]:
        return [replace(run("shortcut", scale.shortcut_arch, seed, data=scale.shortcut_data, shortcut=option),
                        name=f"shortcut-{scale.shortcut_arch}{option}-s{seed}") for option in "ABC"]

    first, deep_lr = scale.seeds[0], scale.lr * scale.deep_batch / scale.batch
    degradation = {seed: [run("degradation", arch, seed, probe_at=(0, scale.max_steps), responses=True)
                          for arch in scale.degradation] for seed in scale.seeds}
    runs = degradation[first]
    runs += [run("init", arch, first, max_steps=0, probe_at=(0,)) for arch in scale.probe_only]
    runs += [run("deep", arch, first, max_steps=scale.deep_steps, batch=scale.deep_batch, lr=deep_lr,
                 eval_every=0, log_every=1, probe_at=(0,), save_every=0) for arch in scale.deep]
    runs += shortcuts(first)
    # then the other seeds: of the central experiment first
    for seed in scale.seeds[1:]:
        runs += degradation[seed]
    for seed in scale.seeds[1:]:
        runs += shortcuts(seed)
    return runs


def run_all(scale: Scale, out: Path, device: str, cifar_root: str = "", command: str = "") -> Path:
    """Run (or resume) every run of the scale, rewriting the report as runs end; returns report.md."""
    from training.paper import report as paper_report

    runs, sets = plan(scale), {}  # the folder appears with the first run's data loaded: bad data writes nothing
    reported = time.monotonic()
    for i, r in enumerate(runs):
        if (out / "runs" / f"{r.name}.json").exists():
            continue
        key = (r.data, r.size)
        if key not in sets:
            sets[key] = paper_runs.load_sets(r.data, r.size, cifar_root)
        print(f"[{i + 1}/{len(runs)}] {r.name}", file=sys.stderr, flush=True)
        started = time.monotonic()
        paper_runs.train(r, sets[key], out, device)
        print(f"[{i + 1}/{len(runs)}] {r.name} done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        if time.monotonic() - reported < 60:  # plotting costs more than a tiny run: once a minute at most
            continue
        reported = time.monotonic()
        try:
            paper_report.write(scale, runs, out, command)
        except Exception as error:  # a plotting bug must not stop hours of training; the last write raises
            print(f"report not written: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
    return paper_report.write(scale, runs, out, command)


def main(argv: list[str]) -> int:
    """`resnet-train paper ...`: parse, run, print the report's path."""
    parser = argparse.ArgumentParser(prog="resnet-train paper", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small", help="small (CPU, digits) or paper (CIFAR-10, GPU)")
    parser.add_argument("--out", required=True, help="folder for runs/*.json, report.md and the PNGs")
    parser.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--cifar-root", default="", help="CIFAR-10 folder (default ~/.cache/cifar10)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the finished runs")
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # the report names the command that ran the experiments, also when only rewritten
    command = "resnet-train paper " + shlex.join(a for a in argv if a != "--report-only")
    if args.report_only:
        from training.paper import report as paper_report
        path = paper_report.write(scale, plan(scale), Path(args.out), command)
    else:
        path = run_all(scale, Path(args.out), device, args.cifar_root, command)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
