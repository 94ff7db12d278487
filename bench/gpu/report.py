"""The GPU check's report: its targets (docs/gpu.md), table.md, gpu.png and results.json, written
from the results bench/gpu/check.py gathers after each phase."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

from artifact.files import write_atomically

ARCHS = ("resnet18", "resnet152")
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TARGETS = {"raw_resnet18_fp16": 20_000, "service_x_raw": 0.7, "photo_x_decode": 0.8, "fp16_x_fp32": 1.5,
           "train_resnet50": 2_500}


def targets(results: dict) -> list[dict]:
    """Each of the issue's targets with the measured figure and whether it holds."""
    rows = []
    raw = results.get("raw", {}).get("points", [])
    best = {m: max((p for p in raw if p["model"] == m), key=lambda p: p["images_per_s"]) for m in {p["model"] for p in raw}}
    # What the service runs: its default layout (the prefer_nhwc rows) where they were measured.
    served = {m: best.get(f"{m} prefer_nhwc", best[m]) for m in best if " " not in m}
    if "resnet18-fp16" in served:
        b = served["resnet18-fp16"]
        rows.append(("resnet18 fp16 raw ORT, uint8 in, best batch (host to host)", f">= {TARGETS['raw_resnet18_fp16']} img/s",
                     f"{b['images_per_s']:.0f} img/s at batch {b['batch']} "
                     f"(compute only {max(p['compute_images_per_s'] for p in raw if p['model'] == b['model']):.0f})",
                     b["images_per_s"] >= TARGETS["raw_resnet18_fp16"]))
    for arch in ARCHS:
        if arch in served and f"{arch}-fp16" in served:
            ratio = served[f"{arch}-fp16"]["images_per_s"] / served[arch]["images_per_s"]
            rows.append((f"{arch} fp16 / fp32 (best raw, as served)", f">= {TARGETS['fp16_x_fp32']}x", f"{ratio:.2f}x",
                         ratio >= TARGETS["fp16_x_fp32"]))
    for name in sorted(best):
        if f"{name} prefer_nhwc" in best:
            ratio = best[f"{name} prefer_nhwc"]["images_per_s"] / best[name]["images_per_s"]
            rows.append((f"{name} with prefer_nhwc / without (best raw)", "> 1.0x: keep it", f"{ratio:.2f}x",
                         ratio > 1.0))
    service = results.get("service", {}).get("service", [])
    for name in ("resnet18-fp16", "resnet18"):
        for payload in ("pixels", "pixels8"):
            runs = [r for r in service if r["model"] == name and r.get("payload") == payload]
            if runs and name in served:
                top = max(runs, key=lambda r: r["images_per_s"])
                ratio = top["images_per_s"] / served[name]["images_per_s"]
                rows.append((f"service {name}, {payload} / raw best", f">= {TARGETS['service_x_raw']}x",
                             f"{ratio:.2f}x ({top['images_per_s']:.0f} img/s at concurrency {top['concurrency']})",
                             ratio >= TARGETS["service_x_raw"]))
    photos = [r for r in service if r["model"] == "resnet18-fp16" and r.get("payload") == "photo"]
    if photos and "decode" in results:
        top, ceiling = max(photos, key=lambda r: r["images_per_s"]), results["decode"]["images_per_s"]
        ratio = top["images_per_s"] / ceiling
        rows.append(("service resnet18-fp16, photos / JPEG-decode ceiling", f">= {TARGETS['photo_x_decode']}x",
                     f"{ratio:.2f}x ({top['images_per_s']:.0f} of {ceiling:.0f} img/s, {results['decode']['threads']} threads)",
                     ratio >= TARGETS["photo_x_decode"]))
    if "train" in results:
        t = results["train"]["images_per_s"]
        rows.append(("resnet50 training, bf16 + channels-last", f">= {TARGETS['train_resnet50']} img/s",
                     f"{t:.0f} img/s", t >= TARGETS["train_resnet50"]))
    return [{"target": a, "goal": b, "measured": c, "holds": d} for a, b, c, d in rows]


def explain_table(explain: dict | None) -> list[str]:
    """ms per batch with and without the explanations, as the service loads a model by default."""
    bound = {name: e for name, e in (explain or {}).items() if e.get("bound")}
    if not bound:
        return []
    batches = sorted({int(b) for e in bound.values() for b in e["costs"]})
    lines = ["## Explanations on the sized path (per-size sessions, outputs bound per size): ms per batch, "
             "classify alone / with the embedding and maps copied out", "",
             "| model | " + " | ".join(f"b{b}" for b in batches) + " | fp16 against fp32 (probe batch) |",
             "| --- |" + " ---: |" * len(batches) + " --- |"]
    for name, e in sorted(bound.items()):
        cells = [f"{e['costs'][str(b)]['classify_ms']:.2f} / {e['costs'][str(b)]['explain_ms']:.2f}"
                 if str(b) in e["costs"] else "" for b in batches]
        twin = e.get("against_fp32")
        note = (f"map peaks agree {twin['map_peak_agreement']:.0%} of {twin['maps_compared']}, max normalised "
                f"map diff {twin['map_max_abs_diff_normalised']}, embedding cosine >= {twin['embedding_cosine_min']}"
                if twin and twin["maps_compared"] else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {note} |")
    return [*lines, ""]


def table(results: dict) -> str:
    meta = results["meta"]
    lines = [f"# GPU check: {meta['gpu']}", "",
             f"onnxruntime {meta['onnxruntime']}, Python {meta['python']}, {meta['cpus']} CPUs, {meta['started']}; "
             f"`{meta['command']}`", ""]
    if results.get("targets"):
        lines += ["| target | goal | measured | holds |", "| --- | --- | --- | --- |"]
        lines += [f"| {t['target']} | {t['goal']} | {t['measured']} | {'yes' if t['holds'] else 'NO'} |" for t in results["targets"]]
        lines.append("")
    raw = results.get("raw", {}).get("points", [])
    if raw:
        lines += [f"## Raw ONNX Runtime on {results['meta'].get('device', 'cuda')} (the service's sized runner, one size "
                  "at a time), img/s host to host (compute only)", "",
                  "| model | " + " | ".join(f"b{b}" for b in BATCHES) + " |", "| --- |" + " ---: |" * len(BATCHES)]
        for name in sorted({p["model"] for p in raw}):
            by = {p["batch"]: p for p in raw if p["model"] == name}
            lines.append(f"| {name} | " + " | ".join(
                f"{by[b]['images_per_s']:.0f} ({by[b]['compute_images_per_s']:.0f})" if b in by else "" for b in BATCHES) + " |")
        lines += ["", "sized runner vs plain session.run, max |logit diff|: " + ", ".join(
            f"{k} {v:.1e}" for k, v in results["raw"]["sized_vs_plain_max_abs_diff"].items()), ""]
        lines += explain_table(results["raw"].get("explain"))
    if "decode" in results:
        d = results["decode"]
        lines += [f"## JPEG-decode ceiling: {d['images_per_s']:.0f} img/s on {d['threads']} threads "
                  f"({d['per_thread_images_per_s']:.0f} per thread; the bench photos, {d['model']}'s preprocessing)", ""]
    lines += diagnose_table(results.get("diagnose"))
    service = results.get("service", {}).get("service", [])
    if service:
        lines += ["## resnet-serve on CUDA under resnet-bench", "", "| model | payload | concurrency | img/s | p50 ms | p99 ms |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['model']} | {r.get('payload', '')} | {r['concurrency']} | {r['images_per_s']:.0f} | "
                  f"{r.get('p50_ms', 0):.1f} | {r.get('p99_ms', 0):.1f} |" for r in service]
        lines += ["", "decode + preprocess, ms per image on one thread: " + json.dumps(results["service"]["decode_ms"]), ""]
    if results.get("service_variants"):
        lines += ["## resnet-serve variants (img/s by concurrency; p50 ms)", ""]
        for variant, run in results["service_variants"].items():
            lines.append(f"- `{variant or 'defaults'}`: " + ", ".join(
                f"{r['model']} {r.get('payload', '')} c={r['concurrency']} {r['images_per_s']:.0f} "
                f"({r['p50_ms']:.0f} ms, batch {r.get('mean_batch', 0):.1f})" for r in run["service"]))
        lines.append("")
    if "train" in results:
        t = results["train"]
        lines += [f"## Training: resnet50 {t['images_per_s']:.0f} img/s ({t['settings']}, batch {t['batch']}, "
                  f"{t['steps']} steps, {t['seconds']} s, torch {t['torch']})", ""]
    if "cli-train" in results:
        c = results["cli-train"]
        lines += [f"resnet-train (DataLoader rendering included): {c['images_per_s']} img/s best window; `{c['command']}`", ""]
    if "export" in results:
        lines += ["## Export (resnet-export, fp16 gate on the GPU)", ""]
        lines += [f"- {k}: {v.get('gate', 'rc ' + str(v['rc']))}, {v['seconds']} s, {v['mb']} MB"
                  f"{', ' + v['judgement'] if v.get('judgement') else ''}" for k, v in results["export"].items()]
        lines.append("")
    if results["errors"]:
        lines += ["## Errors", ""] + [f"- {k}: {v[-300:]}" for k, v in results["errors"].items()]
    return "\n".join(lines) + "\n"


def diagnose_table(diagnose: dict | None) -> list[str]:
    """The diagnose phase (bench/gpu/diagnose.py): one table per model, the engine variants as rows."""
    if not diagnose:
        return []
    lines = [f"## Diagnose: the service's batching loop without HTTP, on {diagnose['device']} (cuDNN "
             f"{diagnose.get('cudnn') or 'n/a'}; cycle {diagnose['cycle']}, then {diagnose['clients']} one-image "
             f"clients; {diagnose['seconds_per_case']} s each)", ""]
    for name, model in diagnose["models"].items():
        lines += [f"### {name}", "",
                  "| case | sizes | cycle img/s | p50 ms | cpu/wall | x old ladder | clients img/s | mean batch "
                  "| GPU MiB | load s | notes |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for case, r in model["cases"].items():
            if "cycle" not in r:
                lines.append(f"| {case} | | | | | | | | | | {(r.get('error') or r.get('skipped', ''))[-200:]} |")
                continue
            c, k = r["cycle"], r["clients"]
            notes = ", ".join(filter(None, ["shared session" if r["shared"] else "", "graphs" if r["graphs"] else "",
                                            "pinned" if r["pinned"] else "pageable"]))
            lines.append(f"| {case} | {','.join(map(str, r['sizes']))} | {c['images_per_s']:.0f} | {c['p50_ms']:.2f} | "
                         f"{c['cpu_over_wall']:.2f} | {r.get('x_old_ladder', 1.0):.2f} | {k['images_per_s']:.0f} | "
                         f"{k['mean_batch']:.1f} | {r['device_memory_mib'] if r['device_memory_mib'] is not None else '-'} | "
                         f"{r['load_s']} | {notes} |")
        per_size = {case: r["cycle"]["per_size"] for case, r in model["cases"].items() if "cycle" in r}
        if per_size:
            sizes = list(next(iter(per_size.values())))
            lines += ["", "per batch size in the cycle, p50 wall ms (inference-thread CPU ms):", "",
                      "| case | " + " | ".join(f"b{n}" for n in sizes) + " |", "| --- |" + " ---: |" * len(sizes)]
            lines += [f"| {case} | " + " | ".join(f"{v[n]['p50_ms']:.2f} ({v[n]['cpu_p50_ms']:.2f})" for n in sizes) + " |"
                      for case, v in per_size.items()]
        lines.append("")
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    raw = results.get("raw", {}).get("points", [])
    for name in sorted({p["model"] for p in raw}):
        pts = [p for p in raw if p["model"] == name]
        left.plot([p["batch"] for p in pts], [p["images_per_s"] for p in pts], marker="o", label=name)
    left.set(xscale="log", yscale="log", xlabel="batch", ylabel="img/s (host to host)", title="raw ONNX Runtime CUDA")
    if raw:
        left.legend()
    service = results.get("service", {}).get("service", [])
    for key in sorted({(r["model"], r.get("payload", "")) for r in service}):
        pts = [r for r in service if (r["model"], r.get("payload", "")) == key]
        right.plot([r["concurrency"] for r in pts], [r["images_per_s"] for r in pts], marker="o", label=" ".join(key))
    right.set(xscale="log", xlabel="concurrent connections", ylabel="img/s", title="resnet-serve on CUDA")
    if service:
        right.legend()
    fig.suptitle(results["meta"]["gpu"])
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def write(out: Path, results: dict) -> None:
    """results.json, table.md and gpu.png in `out`: called after every phase, so a cut-short run keeps what it measured."""
    # Atomic: a phase killed by its timeout mid-write must not leave the rerun a broken results.json.
    write_atomically(out / "results.json", lambda f: f.write((json.dumps(results, indent=1) + "\n").encode()))
    write_atomically(out / "table.md", lambda f: f.write(table(results).encode()))
    try:
        plot(results, out / "gpu.png")
    except Exception:  # noqa: BLE001 - the plot is a convenience; the JSON and table hold the numbers
        traceback.print_exc()
