"""What resnet-bench writes: the table, the project's targets checked against the numbers, and the plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO

from artifact import write_atomically

# The project's targets for this 2-core machine (docs/performance.md), for fp32 224x224 models and the
# ~500x375 photo payload.
SERVICE_VS_RAW = {"resnet152": 0.9, "resnet18": 0.7}  # service best / raw ORT best batched, at least
SERVICE_VS_BASELINE = 2.0  # service best / PyTorch eager baseline best, at least
LATENCY_SLACK_MS = 10.0  # concurrency-1 p50 at most raw batch-1 p50 + decode + this
INT8_VS_FP32 = 2.5  # int8 service best / fp32 service best, at least
TARGET_PAYLOAD = "photo"

COLUMNS = ("stack", "model", "precision", "payload", "conc", "img/s", "p50 ms", "p95 ms", "p99 ms",
           "mean batch", "x raw best", "svc cpu", "client cpu")


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def rows(results: dict) -> list[tuple[str, ...]]:
    """One row per measured level: the service's, then the baseline's."""
    out = []
    for stack, runs in (("service", results["service"]), ("torch eager", results["baseline"])):
        for r in runs:
            out.append((stack, r["model"], r["precision"], r["payload"], str(r["concurrency"]), _fmt(r["images_per_s"]),
                        _fmt(r["p50_ms"]), _fmt(r["p95_ms"]), _fmt(r["p99_ms"]), _fmt(r.get("mean_batch"), 2),
                        _fmt(r.get("x_raw_best"), 2), _fmt(r.get("server_cpu_cores"), 2), _fmt(r["client_cpu_cores"], 2)))
    return out


def markdown(header: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def raw_table(results: dict) -> str:
    body = [(p["model"], p["precision"], str(p["batch"]), _fmt(p["images_per_s"]), _fmt(p["p50_ms"]))
            for p in results["raw"]]
    return markdown(("model", "precision", "batch", "img/s", "p50 ms per batch"), body)


def best(runs: list[dict], model: str, payload: str = TARGET_PAYLOAD) -> dict | None:
    """The run with the highest throughput for a model and payload."""
    mine = [r for r in runs if r["model"] == model and r["payload"] == payload]
    return max(mine, key=lambda r: r["images_per_s"]) if mine else None


def targets(results: dict) -> list[dict]:
    """Each of the project's targets that the results can judge: what was required, what was measured."""
    checks = []
    cards = results["models"]
    raw_best = {m: max((p["images_per_s"] for p in results["raw"] if p["model"] == m), default=None) for m in cards}
    for model, card in cards.items():
        service = best(results["service"], model)
        if service is None:
            continue
        arch, precision = card["arch"], card["precision"]
        if raw_best.get(model) and arch in SERVICE_VS_RAW and precision == "fp32":
            ratio = service["images_per_s"] / raw_best[model]
            checks.append(_check(f"{model}: service best / raw ORT best", ratio, SERVICE_VS_RAW[arch],
                                 f"{service['images_per_s']:.1f} img/s at c={service['concurrency']} vs raw {raw_best[model]:.1f}"))
        baseline = best(results["baseline"], model)
        if baseline is not None and baseline["images_per_s"] > 0:
            ratio = service["images_per_s"] / baseline["images_per_s"]
            checks.append(_check(f"{model}: service best / torch eager best", ratio, SERVICE_VS_BASELINE,
                                 f"{service['images_per_s']:.1f} vs {baseline['images_per_s']:.1f} img/s"))
        one = next((r for r in results["service"] if r["model"] == model and r["payload"] == TARGET_PAYLOAD
                    and r["concurrency"] == 1), None)
        raw_one = next((p for p in results["raw"] if p["model"] == model and p["batch"] == 1), None)
        decode = results["decode_ms"].get(model, {}).get(TARGET_PAYLOAD)
        if one and raw_one and decode is not None and one["p50_ms"] is not None:
            limit = raw_one["p50_ms"] + decode + LATENCY_SLACK_MS
            checks.append(_check(f"{model}: c=1 p50 ms (at most)", one["p50_ms"], limit,
                                 f"raw batch-1 {raw_one['p50_ms']:.1f} + decode {decode:.1f} + {LATENCY_SLACK_MS:g}",
                                 at_most=True))
        if precision == "int8":
            fp32 = next((m for m, c in cards.items() if c["arch"] == arch and c["precision"] == "fp32"), None)
            fp32_best = best(results["service"], fp32) if fp32 else None
            if fp32_best is not None and fp32_best["images_per_s"] > 0:
                ratio = service["images_per_s"] / fp32_best["images_per_s"]
                checks.append(_check(f"{model}: int8 / fp32 service best", ratio, INT8_VS_FP32,
                                     f"{service['images_per_s']:.1f} vs {fp32_best['images_per_s']:.1f} img/s"))
    return checks


def _check(name: str, value: float, required: float, detail: str, at_most: bool = False) -> dict:
    holds = value <= required if at_most else value >= required
    return {"target": name, "value": round(value, 2), "required": round(required, 2), "holds": holds, "detail": detail}


def targets_table(checks: list[dict]) -> str:
    body = [(c["target"], _fmt(c["value"], 2), _fmt(c["required"], 2), "holds" if c["holds"] else "MISSED", c["detail"])
            for c in checks]
    return markdown(("target", "measured", "required", "", "numbers"), body)


def write(results: dict, out: Path) -> dict[str, Path]:
    """results.json, table.md and results.png in `out`, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    meta = results["meta"]
    text = "\n\n".join((
        f"Service and baseline, measured {meta['started']} on {meta['cpus']} x {meta['cpu']} (1-minute load "
        f"{meta['load_average_start'][0]:.2f} at the start, {meta['load_average_end'][0]:.2f} at the end); "
        f"models: {meta.get('weights_label') or 'as exported'}; payloads: " + "; ".join(
            f"{k} = {v['description']}" for k, v in results["payloads"].items()),
        markdown(COLUMNS, rows(results)),
        "Raw ONNX Runtime (same model files, same threads, no decoding)",
        raw_table(results),
        "Targets",
        targets_table(results["targets"]),
    )) + "\n"
    paths = {"json": out / "results.json", "table": out / "table.md", "plot": out / "results.png"}
    write_atomically(paths["json"], lambda f: f.write((json.dumps(results, indent=2) + "\n").encode()))
    write_atomically(paths["table"], lambda f: f.write(text.encode()))
    write_atomically(paths["plot"], lambda f: plot(results, f))
    return paths


def plot(results: dict, path: Path | BinaryIO) -> None:
    """Throughput against p50 latency: one line per model through its concurrency levels, one panel
    per payload; raw ORT's batch sweep dashed, the eager baseline as crosses."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    payloads = list(dict.fromkeys(r["payload"] for r in results["service"])) or [TARGET_PAYLOAD]
    figure, axes = plt.subplots(1, len(payloads), figsize=(7 * len(payloads), 5.5), squeeze=False)
    colours = {m: plt.cm.tab10(i) for i, m in enumerate(results["models"])}
    for ax, payload in zip(axes[0], payloads):
        for model, colour in colours.items():
            runs = [r for r in results["service"] if r["model"] == model and r["payload"] == payload and r["p50_ms"]]
            if runs:
                ax.plot([r["p50_ms"] for r in runs], [r["images_per_s"] for r in runs], "o-", color=colour, label=f"{model} service")
                for r in runs:
                    ax.annotate(f"c={r['concurrency']}", (r["p50_ms"], r["images_per_s"]), fontsize=7,
                                textcoords="offset points", xytext=(3, 3))
            raw = [p for p in results["raw"] if p["model"] == model]
            if raw:
                ax.plot([p["p50_ms"] for p in raw], [p["images_per_s"] for p in raw], "--", color=colour, alpha=0.6,
                        label=f"{model} raw ORT (b=1..{raw[-1]['batch']}, no decode)")
            base = [r for r in results["baseline"] if r["model"] == model and r["payload"] == payload and r["p50_ms"]]
            if base:
                ax.plot([r["p50_ms"] for r in base], [r["images_per_s"] for r in base], "x:", color=colour, markersize=9,
                        label=f"{model} torch eager")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("p50 latency, ms (raw ORT: per batch)")
        ax.set_ylabel("images / s")
        ax.set_title(f"payload: {payload}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    label = results["meta"].get("weights_label")
    figure.suptitle("resnet-serve vs raw ONNX Runtime vs PyTorch eager" + (f" ({label})" if label else ""))
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)
