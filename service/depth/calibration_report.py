"""What resnet-calibrate shows a person: the cascade's and abstention's plots and tables."""

from __future__ import annotations

from pathlib import Path

from artifact import write_atomically


def plot(result: dict, names, path: Path) -> None:
    """Held-out accuracy against mean GFLOPs: a curve per signal, the single models, the choice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for signal, curve in result["curves"].items():
        points = sorted(curve["held_out"], key=lambda p: p["gflops"])
        axes.plot([p["gflops"] for p in points], [p["top1"] for p in points], label=f"cascade, {signal}")
    for name in names:
        s = result["singles"]["held_out"][name]
        axes.scatter([s["gflops"]], [s["top1"]], marker="s", zorder=3)
        axes.annotate(name, (s["gflops"], s["top1"]), textcoords="offset points", xytext=(5, -12))
    chosen = result["chosen"]["held_out"]
    axes.scatter([chosen["gflops"]], [chosen["top1"]], marker="*", s=200, c="k", zorder=4,
                 label=f"chosen: {result['signal']} >= {result['threshold']:.3g}")  # fmt: skip
    axes.set(xlabel="mean GFLOPs per image", ylabel="top-1 %, held-out half", title="depth cascade")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=100, bbox_inches="tight"))
    plt.close(figure)


def plot_abstention(rules: dict, path: Path) -> None:
    """Held-out risk against coverage per model, with each chosen threshold's point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for name, rule in rules.items():
        curve = rule["curve"]
        (line,) = axes.plot([100 * c for c in curve["coverage"]], [100 * r for r in curve["risk"]], label=name)
        point = rule["held_out"]
        if point["risk"] is not None:
            axes.scatter([100 * point["coverage"]], [100 * point["risk"]], color=line.get_color(), zorder=3)
    target = 100 * next(iter(rules.values()))["target_risk"]
    axes.axhline(target, color="k", lw=0.8, ls="--", label=f"target risk {target:g}%")
    axes.set(xlabel="coverage: % of images answered", ylabel="risk: % of answers wrong",
             title="abstention, held-out half (dot: the calibrated threshold)")  # fmt: skip
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=100, bbox_inches="tight"))
    plt.close(figure)


def abstention_table(rules: dict) -> str:
    """Markdown: each model's threshold and what it keeps, on both halves."""
    rows = ["| model | threshold | half | answered % | risk % |", "|---|---|---|---|---|"]
    for name, rule in rules.items():
        for half in ("calibration", "held_out"):
            point = rule[half]
            risk = "-" if point["risk"] is None else f"{100 * point['risk']:.2f}"
            rows.append(f"| {name} | {rule['threshold']:.4g} | {half} | {100 * point['coverage']:.1f} | {risk} |")
    return "\n".join(rows)


def table(result: dict, names) -> str:
    """Markdown: each single model and the chosen cascade, on both halves."""
    rows = ["| | half | top-1 % | top-5 % | mean GFLOPs | escalated |", "|---|---|---|---|---|---|"]
    for half in ("calibration", "held_out"):
        for name in names:
            s = result["singles"][half][name]
            rows.append(f"| {name} alone | {half} | {s['top1']:.2f} | {s['top5']:.2f} | {s['gflops']:.4g} | |")
        c = result["chosen"][half]
        rows.append(f"| auto ({result['signal']} >= {result['threshold']:.4g}) | {half} | {c['top1']:.2f} | "
                    f"{c['top5']:.2f} | {c['gflops']:.4g} | {100 * c['escalation_rate']:.1f}% |")  # fmt: skip
    return "\n".join(rows)
