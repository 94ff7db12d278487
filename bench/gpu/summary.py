"""The picture docs/gpu.md shows: resnet18 fp16 on an H200, from the engine to the HTTP service.

    python -m bench.gpu.summary docs/gpu/run4/results.json docs/gpu/replicas docs/gpu/serving.png

Left: the batching loop without HTTP (diagnose phase), the earlier single-session ladder against one
session per batch size. Right: img/s through HTTP by concurrency, one process with one or eight
images per request, the earlier behaviour, and 1 to 12 processes on the same GPU
(bench/studies/replicas.py), against raw ONNX Runtime's best host-to-host rate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODEL = "resnet18-fp16"


def draw(check: dict, replicas: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from artifact.files import write_atomically

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1, 1.6]})
    cases = check["diagnose"]["models"][MODEL]["cases"]
    names = [name for name in cases if "cycle" in cases[name]]
    left.bar(names, [cases[n]["cycle"]["images_per_s"] for n in names], color="#4c72b0")
    for i, name in enumerate(names):
        left.text(i, cases[name]["cycle"]["images_per_s"], f"{cases[name]['cycle']['p50_ms']:.1f} ms",
                  ha="center", va="bottom", fontsize=8)
    left.set(ylabel="img/s (batch sizes changing every batch)", title="engine, no HTTP: p50 ms per batch on top")
    left.tick_params(axis="x", rotation=20)

    raw = max(p["images_per_s"] for p in check["raw"]["points"] if p["model"].startswith(MODEL))
    right.axhline(raw, color="black", linestyle="--", linewidth=1)
    right.text(1, raw, f"raw ONNX Runtime, best batch: {raw:,.0f}", va="bottom", fontsize=8)
    variants = check["service_variants"]
    for (variant, run), style in zip(variants.items(), ("-", ":")):
        label = "defaults" if not variant else "earlier (one session, NCHW)"
        for payload, colour in (("pixels", "#4c72b0"), ("pixels8", "#dd8452"), ("photo", "#55a868")):
            rows = [r for r in run["service"] if r["model"] == MODEL and r.get("payload") == payload]
            if rows:
                right.plot([r["concurrency"] for r in rows], [r["images_per_s"] for r in rows], style, marker="o",
                           color=colour, label=f"1 process, {payload}, {label}")
    for payload, result in replicas.items():
        for i, row in enumerate(result["rows"]):
            right.scatter([result["concurrency"]], [row["images_per_s"]], marker="s", s=30,
                          color="#c44e52" if payload == "pixels8" else "#8172b3")
            right.annotate(f"{row['replicas']} proc", (result["concurrency"], row["images_per_s"]),
                           textcoords="offset points", xytext=(6, 4 - 10 * i), fontsize=7)  # close values: stacked
        right.scatter([], [], marker="s", color="#c44e52" if payload == "pixels8" else "#8172b3",
                      label=f"N processes, {payload}, {result['concurrency']} connections in all")
    right.set(xscale="log", yscale="log", xlabel="concurrent connections", ylabel="img/s",
              title=f"{MODEL} through HTTP on one H200")
    right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=110))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m bench.gpu.summary CHECK_RESULTS.json REPLICAS_DIR OUT.png", file=sys.stderr)
        return 2
    check = json.loads(Path(argv[0]).read_text())
    replicas = {}
    for file in sorted(Path(argv[1]).glob("*.json")):
        result = json.loads(file.read_text())
        replicas[result["payload"]] = result
    draw(check, replicas, Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
