"""The report of training.paper.experiments: <out>/report.md and its PNG plots, from <out>/runs/*.json.

Every table says which runs made it; means are over the seeds that finished, with the sample
standard deviation ("±") where there are two or more, and the count of seeds (n) always. The
paper's numbers are quoted beside ours with the table or figure they come from.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a training box
import matplotlib.pyplot as plt  # noqa: E402

from artifact import depth_of  # noqa: E402

# He et al., arXiv 1512.03385. Table 6: CIFAR-10 test error (%) of the ResNets (no plain-net
# numbers are tabulated: Fig. 6 shows their curves only); ResNet-110's "6.43" is the best of 5
# runs, their mean and std 6.61 ± 0.16.
PAPER_TABLE6 = {"resnet20": "8.75", "resnet32": "7.51", "resnet44": "7.17", "resnet56": "6.97",
                "resnet110": "6.43 (6.61 ± 0.16)", "resnet1202": "7.93"}
# Table 3: ImageNet val top-1 error (%, 10-crop) of ResNet-34 with shortcut options A, B, C.
PAPER_TABLE3 = {"A": "25.03", "B": "24.52", "C": "24.19"}


def write(scale, runs, out: Path, command: str) -> Path:
    """Rewrite <out>/report.md and its PNGs from the runs that have finished; returns report.md."""
    out = Path(out)
    done = {r.name: json.loads((out / "runs" / f"{r.name}.json").read_text()) for r in runs
            if (out / "runs" / f"{r.name}.json").exists()}
    seconds = sum(rec["seconds"] for rec in done.values())
    lines = [
        f"# He et al. (arXiv 1512.03385) reproduced at the {scale.name} scale",
        "",
        f"Made by `{command}` ({len(done)} of {len(runs)} runs finished, {seconds / 60:.1f} min of training, "
        f"wall clock summed over the runs, on {_devices(done)}). Recipe of every training run: SGD, momentum 0.9, "
        f"weight decay 1e-4, batch {scale.batch}, lr {scale.lr:g} divided by 10 at steps "
        f"{', '.join(map(str, scale.lr_milestones))}, {scale.max_steps} steps in all, pad-and-crop augmentation (sec. 4.2), {scale.size}x{scale.size} inputs, "
        f"the same for every network. Seeds: {', '.join(map(str, scale.seeds))}.",
        "",
    ]
    lines += _degradation(scale, runs, done, out)
    lines += _gradients(scale, runs, done, out)
    lines += _deep(scale, runs, done, out)
    lines += _responses(scale, runs, done, out)
    lines += _shortcuts(scale, runs, done)
    lines += ["## Runs", "", "| run | steps | seconds | threads | device |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {rec['run']['max_steps']} | {rec['seconds']:.0f} | {rec['threads']} | {rec['device']} |"
              for name, rec in done.items()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _stat(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def _by_arch(runs, done, prefix: str) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for r in runs:
        if r.name.startswith(prefix) and r.name in done:
            found.setdefault(r.arch if r.shortcut is None else r.shortcut, []).append(done[r.name])
    return found


def _final_train_err(rec: dict) -> float:
    return rec["train"][-1]["err"]


def _degradation(scale, runs, done, out: Path) -> list[str]:
    nets = _by_arch(runs, done, "degradation-")
    lines = ["## 1. Degradation (Fig. 1, Fig. 6, Table 6)", "",
             f"Data: {scale.data}. Training error: the error on the augmented mini-batches of the last "
             f"{scale.eval_every} steps (what Fig. 6's thin curves show); eval-mode training error: on up to "
             f"2000 training images, unaugmented, with BN's running statistics. Test error: the whole test split.", "",
             "| network | params | training error % | eval-mode training error % | test error % | paper, CIFAR-10 test error % (Table 6) |",
             "|---|---|---|---|---|---|"]
    for arch, recs in nets.items():
        lines.append(f"| {arch} | {recs[0]['params']:,} | {_stat([_final_train_err(r) for r in recs])} | "
                     f"{_stat([r['train_eval']['err'] for r in recs])} | {_stat([r['test'][-1]['err'] for r in recs])} | "
                     f"{PAPER_TABLE6.get(arch, 'not tabulated (Fig. 6: curves only)')} |")
    if nets:
        _plot_curves(nets, out / "degradation.png")
        lines += ["", "![training (thin) and test (bold) error against step, mean over seeds](degradation.png)", ""]
        lines += _verdicts(nets)
    return lines + [""]


def _verdicts(nets: dict[str, list[dict]]) -> list[str]:
    """The paper's claims (deeper plain: higher; deeper ResNet: lower; ResNet against plain at one
    depth: lower), judged on the final training error; spread: the sum of the two seed stds."""
    pairs = []
    for kind, expect in (("plain", "higher"), ("resnet", "lower")):
        archs = sorted((a for a in nets if a.startswith(kind)), key=depth_of)
        if len(archs) >= 2:
            pairs.append((archs[0], archs[-1], expect))
    deepest = max(map(depth_of, nets))
    if f"plain{deepest}" in nets and f"resnet{deepest}" in nets:  # the shortcut's effect at one depth
        pairs.append((f"plain{deepest}", f"resnet{deepest}", "lower"))
    lines = []
    for base, other, expect in pairs:
        a, b = [[_final_train_err(r) for r in nets[x]] for x in (base, other)]
        diff = statistics.mean(b) - statistics.mean(a)
        spread = sum(statistics.stdev(v) if len(v) > 1 else 0.0 for v in (a, b))
        wanted = diff > 0 if expect == "higher" else diff < 0
        verdict = ("as the paper" if wanted and abs(diff) > spread else
                   "the paper's direction, within the seeds' spread" if wanted else "not as the paper")
        lines.append(f"- {other} ends with training error {statistics.mean(b):.2f}% against {base}'s "
                     f"{statistics.mean(a):.2f}% (difference {diff:+.2f} points, spread {spread:.2f}); the paper: "
                     f"{expect}. Verdict: {verdict}.")
    return lines


def _plot_curves(nets: dict[str, list[dict]], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind in zip(axes, ("plain", "resnet")):
        for arch in sorted((a for a in nets if a.startswith(kind)), key=depth_of):
            recs = nets[arch]
            line, = ax.plot(*_mean_curve(recs, "train"), lw=1, ls="--")
            ax.plot(*_mean_curve(recs, "test"), lw=2.5, color=line.get_color(), label=f"{arch} (n={len(recs)})")
        ax.set(title=kind, xlabel="step", ylabel="error (%)")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _mean_curve(recs: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps = [p["step"] for p in recs[0][key]]
    return steps, [statistics.mean(r[key][i]["err"] for r in recs) for i in range(len(steps))]


def _gradients(scale, runs, done, out: Path) -> list[str]:
    """Per-layer gradient norms at initialisation and after training; the first layer's against depth."""
    probes: dict[str, dict[str, list]] = {}  # arch -> step -> [per-layer norms of each seed]
    for r in runs:
        if r.name in done and (r.name.startswith(("degradation-", "init-", "deep-"))):
            for step, norms in done[r.name]["grads"].items():
                probes.setdefault(r.arch, {}).setdefault(step, []).append([n for _, n in norms])
    if not probes:
        return []
    lines = ["## 2. Gradient flow through depth", "",
             "The L2 norm of the gradient of the mean cross-entropy with respect to each weighted layer's "
             "weights, on one fixed training batch in train mode (training.probes.gradient_norms); "
             "first layer: the 3x3 stem conv; last: the linear classifier.", "",
             "| network | step | first-layer gradient norm | last-layer gradient norm | first / last |", "|---|---|---|---|---|"]
    for arch in sorted(probes, key=lambda a: (a.startswith("resnet"), depth_of(a))):
        for step, seeds in sorted(probes[arch].items(), key=lambda kv: int(kv[0])):
            first, last = [s[0] for s in seeds], [s[-1] for s in seeds]
            ratio = [f / l for f, l in zip(first, last)]
            lines.append(f"| {arch} | {step} | {_sci(first)} | {_sci(last)} | {_sci(ratio)} |")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for arch in sorted(probes, key=lambda a: (a.startswith("resnet"), depth_of(a))):
        style = "-" if arch.startswith("resnet") else ":"
        for ax, step in ((axes[0], "0"), (axes[1], str(scale.max_steps))):
            if step in probes[arch]:
                norms = probes[arch][step][0]
                ax.semilogy([i / (len(norms) - 1) for i in range(len(norms))], norms, style, label=arch)
    axes[0].set(title="at initialisation (seed 0)", xlabel="layer position (0: first, 1: classifier)", ylabel="gradient norm")
    axes[1].set(title=f"after {scale.max_steps} steps (seed 0)", xlabel="layer position (0: first, 1: classifier)")
    for kind, marker in (("plain", "o"), ("resnet", "s")):
        pts = sorted((depth_of(a), statistics.mean(s[0] for s in probes[a]["0"])) for a in probes
                     if a.startswith(kind) and "0" in probes[a])
        if pts:
            axes[2].loglog(*zip(*pts), marker=marker, label=kind)
    axes[2].set(title="first-layer gradient norm at initialisation", xlabel="depth (layers)")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "gradients.png", dpi=80)
    plt.close(fig)
    return lines + ["", "![per-layer gradient norms; first-layer norm against depth](gradients.png)", ""]


def _sci(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g} (n={len(values)})"


def _deep(scale, runs, done, out: Path) -> list[str]:
    recs = {r.arch: done[r.name] for r in runs if r.name.startswith("deep-") and r.name in done}
    if not recs:
        return []
    lines = ["### The first steps of 1202-layer nets", "",
             f"{scale.deep_steps} steps of batch {scale.deep_batch} at the warm-up lr of sec. 4.2 (lr/10), seed "
             f"{scale.seeds[0]}; loss of each mini-batch.", "",
             "| network | params | mean loss, first steps | mean loss, last 5 steps | seconds per step |", "|---|---|---|---|---|"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for arch, rec in recs.items():
        losses = [p["loss"] for p in rec["train"]]
        steps = rec.get("diverged_at", len(losses))
        last = (f"NaN from step {rec['diverged_at']} on (training stopped)" if "diverged_at" in rec
                else f"{statistics.mean(losses[-5:]):.3f}")
        lines.append(f"| {arch} | {rec['params']:,} | {statistics.mean(losses[:5]):.3f} (first {min(5, len(losses))}) | "
                     f"{last} | {rec['seconds'] / max(1, steps):.1f} |")
        ax.plot([p["step"] for p in rec["train"]], losses, label=arch)
    ax.set(xlabel="step", ylabel="training loss", title="1202 layers: the first steps")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "deep.png", dpi=80)
    plt.close(fig)
    return lines + ["", "![loss of the first steps](deep.png)", ""]


def _responses(scale, runs, done, out: Path) -> list[str]:
    nets = {a: [r for r in recs if "responses" in r] for a, recs in _by_arch(runs, done, "degradation-").items()}
    nets = {a: recs for a, recs in nets.items() if recs}
    if not nets:
        return []
    lines = ["## 3. Response magnitudes (Fig. 7)", "",
             f"Std of each 3x3 layer's output after its BN (before the ReLU or the addition: a block's second "
             f"one is its residual function), on 500 test images in eval mode, after {scale.max_steps} steps.", "",
             "| network | mean std over layers | median | max |", "|---|---|---|---|"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arch in sorted(nets, key=lambda a: (depth_of(a), a)):
        per_seed = [[s for _, s in r["responses"]] for r in nets[arch]]
        mean = [statistics.mean(v) for v in zip(*per_seed)]
        lines.append(f"| {arch} (n={len(per_seed)}) | {_stat([statistics.mean(p) for p in per_seed])} | "
                     f"{statistics.median(mean):.2f} | {max(mean):.2f} |")
        style = "-" if arch.startswith("resnet") else ":"
        axes[0].plot(range(1, len(mean) + 1), mean, style, label=arch)
        axes[1].plot(range(1, len(mean) + 1), sorted(mean, reverse=True), style, label=arch)
    axes[0].set(title="by layer (original order)", xlabel="layer index", ylabel="std")
    axes[1].set(title="sorted by magnitude", xlabel="rank", ylabel="std")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "responses.png", dpi=80)
    plt.close(fig)
    return lines + ["", "The paper (sec. 4.2, Fig. 7): ResNets have generally smaller responses than their plain "
                    "counterparts, and the deeper ResNet has smaller responses.", "",
                    "![response std by layer and sorted](responses.png)", ""]


def _shortcuts(scale, runs, done) -> list[str]:
    nets = _by_arch(runs, done, "shortcut-")
    if not nets:
        return []
    lines = ["## 4. Shortcut options A, B, C (Table 3)", "",
             f"{scale.shortcut_arch} on {scale.shortcut_data}, {scale.size}x{scale.size}, the recipe above. "
             "A: zero-padding where dimensions grow; B: projections there (torchvision's); C: projections everywhere.", "",
             "| option | params | training error % | test error % | paper, ResNet-34 ImageNet top-1 error % (Table 3, 10-crop) |",
             "|---|---|---|---|---|"]
    for option in sorted(nets):
        recs = nets[option]
        lines.append(f"| {option} | {recs[0]['params']:,} | {_stat([_final_train_err(r) for r in recs])} | "
                     f"{_stat([r['test'][-1]['err'] for r in recs])} | {PAPER_TABLE3[option]} |")
    return lines + [""]


def _devices(done: dict) -> str:
    kinds = sorted({f"{rec['device']} with {rec['threads']} thread(s)" for rec in done.values()})
    return ", ".join(kinds) or "-"
