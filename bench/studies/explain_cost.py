"""What the explanation outputs cost: ONNX Runtime on the CPU, with and without them, asked or not.

ONNX Runtime runs every node of a graph on every run, whatever outputs the caller fetches, so a graph
with extra outputs could slow down the callers that ask only for the logits. This measures it on
random-weight resnet18 and resnet152 at 224 px with 1000 classes (the ImageNet head, where maps of
every class are largest), uint8 NHWC input as resnet-export writes it, at batch 1 and 8:

    plain     the graph as exported before the outputs existed, logits fetched
    logits    the graph with embedding, cam and cam_classes (export.explain), logits fetched
    +emb      the same graph, logits and embedding fetched
    +cam5     the same graph, logits and the maps of the top 5 classes fetched
    +camall   the same graph, cam_k = 1000: the maps of every class fetched
    feats     a graph that exposes the last block's feature maps instead, logits fetched
    +feats    that graph, logits and feature maps [N, C, h, w] fetched

Each round makes `runs` passes; a pass calls every case once, in a shuffled order. The table gives
each case's median time over the rounds' medians, and its ratio to `plain` (median over rounds, with
the lowest and highest round's ratio as the spread).

    python -m bench.studies.explain_cost --out results/explain-cost.json              # 10 min on a 2-core box at load 2-5
    python -m bench.studies.explain_cost --archs resnet18 --rounds 3 --out /tmp/x.json
    python -m bench.studies.explain_cost --profile --out results/explain-profile.json  # per-node kernel time
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from artifact import CAM_CLASSES_OUTPUT, CAM_K_DEFAULT, CAM_K_INPUT, CAM_OUTPUT, EMBEDDING_OUTPUT, Preprocessing, write_atomically

INPUT_SIZE = 224
CLASSES = 1000
CASES = ("plain", "logits", "+emb", "+cam5", "+camall", "feats", "+feats")


def graphs(arch: str) -> dict[str, onnx.ModelProto]:
    """plain, explained (export.explain) and features-exposing graphs of one random-weight network."""
    import torch

    from export import explain, graph
    from training import models

    torch.manual_seed(0)
    pre = replace(Preprocessing.for_input_size(INPUT_SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  input_dtype="uint8", layout="NHWC")
    plain = graph.to_onnx(graph.with_input(models.build(arch, CLASSES), pre), pre, 18)
    explained, _ = explain.add_outputs(onnx.ModelProto.FromString(plain.SerializeToString()))
    feats = onnx.ModelProto.FromString(plain.SerializeToString())
    features = next(n for n in explained.graph.node if n.name == explain.NODE_PREFIX + "features").input[0]
    feats.graph.output.append(onnx.helper.make_tensor_value_info(features, onnx.TensorProto.FLOAT, None))
    return {"plain": plain, "explained": explained, "feats": feats}


def session(proto: onnx.ModelProto, profile_prefix: str | None = None, optimized: Path | None = None) -> ort.InferenceSession:
    """The service's settings for one session (service.engine.runtime.session_options) on every core."""
    options = ort.SessionOptions()
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def calls(sessions: dict, feature_name: str, pixels: np.ndarray) -> dict:
    """case -> a no-argument call that runs it."""
    plain, explained, feats = sessions["plain"], sessions["explained"], sessions["feats"]
    x = {"input": pixels}
    every = {**x, CAM_K_INPUT: np.array([CLASSES], dtype=np.int64)}
    return {
        "plain": lambda: plain.run(["logits"], x),
        "logits": lambda: explained.run(["logits"], x),
        "+emb": lambda: explained.run(["logits", EMBEDDING_OUTPUT], x),
        "+cam5": lambda: explained.run(["logits", CAM_OUTPUT, CAM_CLASSES_OUTPUT], x),
        "+camall": lambda: explained.run(["logits", CAM_OUTPUT, CAM_CLASSES_OUTPUT], every),
        "feats": lambda: feats.run(["logits"], x),
        "+feats": lambda: feats.run(["logits", feature_name], x),
    }


def measure(arch: str, batches: tuple[int, ...], rounds: int, runs: dict[int, int], log=print) -> dict:
    protos = graphs(arch)
    feature_name = protos["feats"].graph.output[-1].name
    sessions = {name: session(proto) for name, proto in protos.items()}
    sizes = {name: len(proto.SerializeToString()) for name, proto in protos.items()}
    rng = np.random.default_rng(0)
    result = {"file_bytes": sizes, "batches": {}}
    for batch in batches:
        pixels = rng.integers(0, 256, (batch, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
        run = calls(sessions, feature_name, pixels)
        for call in run.values():
            call()  # the first run of a shape allocates and picks kernels
        medians = {case: [] for case in CASES}
        for r in range(rounds):
            # One call of every case in turn, in a shuffled order: a burst of other work on the machine
            # then slows every case alike instead of all the calls of one.
            times = {case: [] for case in CASES}
            order = list(CASES)
            for i in range(runs[batch]):
                random.Random(r * 1000 + i).shuffle(order)
                for case in order:
                    started = time.perf_counter()
                    run[case]()
                    times[case].append(time.perf_counter() - started)
            for case in CASES:
                medians[case].append(statistics.median(times[case]))
        ratios = {case: [m / p for m, p in zip(medians[case], medians["plain"])] for case in CASES}
        result["batches"][batch] = {
            case: {"ms": 1e3 * statistics.median(medians[case]), "ratio": statistics.median(ratios[case]),
                   "ratio_min": min(ratios[case]), "ratio_max": max(ratios[case])}
            for case in CASES
        }
        log(f"{arch} batch {batch}: " + ", ".join(
            f"{c} {v['ms']:.1f} ms x{v['ratio']:.3f} [{v['ratio_min']:.3f}, {v['ratio_max']:.3f}]"
            for c, v in result["batches"][batch].items()))
    return result


def profile(arch: str, batches: tuple[int, ...], runs: int, log=print) -> dict:
    """ONNX Runtime's own per-node timings of the explained graph: the share of the maps' nodes.

    Wall-clock ratios on a shared machine move by more than the maps can cost; the profiler times
    each kernel, so the maps' share of a run is measured directly, whoever else uses the cores."""
    import tempfile

    from export import explain

    protos = graphs(arch)
    rng = np.random.default_rng(0)
    result = {"optimised_nodes": _optimised_difference(protos)}
    log(f"{arch}: after ONNX Runtime's optimisations the explained graph has these nodes more than the plain one: "
        f"{result['optimised_nodes']}")
    for batch, k in [(b, k) for b in batches for k in (CAM_K_DEFAULT, CLASSES)]:
        pixels = rng.integers(0, 256, (batch, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
        feed = {"input": pixels, CAM_K_INPUT: np.array([k], dtype=np.int64)}
        with tempfile.TemporaryDirectory(prefix="explain-profile-") as tmp:
            sess = session(protos["explained"], profile_prefix=str(Path(tmp) / arch))
            for _ in range(runs + 1):  # the first run allocates and picks kernels; it is left out below
                sess.run(["logits"], feed)
            events = json.loads(Path(sess.end_profiling()).read_text())
        # Each run's kernels lie inside its model_run event; the median over runs leaves out the
        # runs in which another process took a core in the middle of a kernel.
        spans = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
        kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        totals, maps = [], []
        for start, end in spans[1:]:
            inside = [e for e in kernels if start <= e["ts"] <= end]
            totals.append(sum(e["dur"] for e in inside))
            maps.append(sum(e["dur"] for e in inside if e["name"].startswith(explain.NODE_PREFIX)))
        share = [m / t for m, t in zip(maps, totals)]
        result[f"batch {batch}, k {k}"] = {"maps_us": statistics.median(maps), "all_us": statistics.median(totals),
                         "share": statistics.median(share), "share_min": min(share), "share_max": max(share)}
        r = result[f"batch {batch}, k {k}"]
        log(f"{arch} batch {batch}, cam_k {k}: the maps' nodes {r['maps_us']:.0f} us of {r['all_us'] / 1e3:.1f} ms of kernel time "
            f"per run, median of {len(share)} runs: {100 * r['share']:.3f}% [{100 * r['share_min']:.3f}%, "
            f"{100 * r['share_max']:.3f}%]")
    return result


def _optimised_difference(protos: dict) -> dict[str, int]:
    """Op type -> how many more nodes the explained graph has than the plain one once ONNX Runtime
    has optimised both (fused, NCHWc): exactly the maps' nodes when the outputs change nothing else."""
    import collections
    import tempfile

    counts = {}
    with tempfile.TemporaryDirectory(prefix="explain-optimised-") as tmp:
        for name in ("plain", "explained"):
            path = Path(tmp) / f"{name}.onnx"
            session(protos[name], optimized=path)
            counts[name] = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    ops = set(counts["plain"]) | set(counts["explained"])
    return {op: counts["explained"][op] - counts["plain"][op] for op in sorted(ops)
            if counts["explained"][op] != counts["plain"][op]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.studies.explain_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=["resnet18", "resnet152"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every case")
    p.add_argument("--runs", type=int, default=0, help="timed calls per case per round (0: 20 at batch 1, 5 at 8)")
    p.add_argument("--out", type=Path, required=True, help="where the JSON results go")
    p.add_argument("--profile", action="store_true",
                   help="instead of wall-clock times, ONNX Runtime's per-node profile of the explained graph")
    args = p.parse_args(argv)
    if args.profile:
        out = {"onnxruntime": ort.__version__, "classes": CLASSES, "input_size": INPUT_SIZE, "runs": args.runs or 10,
               "archs": {arch: profile(arch, tuple(args.batches), args.runs or 10) for arch in args.archs}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.out, lambda f: f.write((json.dumps(out, indent=2) + "\n").encode()))
        return 0
    runs = {b: args.runs or (20 if b == 1 else 5) for b in args.batches}
    results = {"onnxruntime": ort.__version__, "cpus": len(os.sched_getaffinity(0)), "classes": CLASSES,
               "input_size": INPUT_SIZE, "rounds": args.rounds, "runs": runs, "archs": {}}
    for arch in args.archs:
        results["archs"][arch] = measure(arch, tuple(args.batches), args.rounds, runs)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.out, lambda f: f.write((json.dumps(results, indent=2) + "\n").encode()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
