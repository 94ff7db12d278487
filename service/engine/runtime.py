"""ONNX Runtime sessions for a folder of exported models: discovery, providers, checks, warm-up.

Each model is `MODELS/<name>/model.onnx` as resnet-export writes it; everything about it (name,
classes, preprocessing, tensor names) comes from the card in its metadata (artifact.ModelCard).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from artifact import CAM_OUTPUT, EMBEDDING_OUTPUT, ArtifactError, ModelCard
from service.engine import cuda, sized
from service.engine.tensors import ORT_DTYPES
from service.config import ServeConfig, available_cpus

log = logging.getLogger("service.engine.runtime")

PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
# The graph input types each card's input_dtype allows (uint8: pixels, normalised in the graph).
_CARD_DTYPES = {"float32": ("tensor(float)", "tensor(float16)"), "uint8": ("tensor(uint8)",)}


class ModelLoadError(RuntimeError):
    """A models folder or file the service cannot serve; the message names the file and the problem."""


@dataclass
class LoadedModel:
    """One served model: its card, its session and what the session really runs on."""

    card: ModelCard
    session: ort.InferenceSession
    path: Path
    providers: tuple[str, ...]  # session.get_providers(): what ONNX Runtime actually uses
    input_dtype: type = np.float32
    warm: bool = field(default=False)  # set once warm_up has run
    # The sized path (service/engine/sized.py): on CUDA, or on the CPU with --sized-on-cpu; None runs session.run.
    runner: sized.SizedRunner | None = None
    device_memory_bytes: int | None = None  # GPU memory its sessions took (loading, then warm-up); None on the CPU

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def device(self) -> str:
        """"cuda" or "cpu": where ONNX Runtime really runs this model (the ladder of variants reads it)."""
        return device_of(self.providers)

    @property
    def timings(self) -> sized.Timings | None:
        """Copy-in, compute and copy-out seconds of the last batch on the sized path; None on session.run."""
        return self.runner.timings if self.runner is not None else None

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax over the logits of a batch of the card's input: [N, num_classes] float32, rows sum to 1."""
        if self.runner is not None:
            return _softmax(self.runner.run(batch))
        (logits,) = self.session.run(
            [self.card.output_name], {self.card.input_name: batch.astype(self.input_dtype, copy=False)}
        )
        return _softmax(logits)

    @property
    def explains(self) -> tuple[str, ...]:
        """The explanations this file's graph can answer: "cam", "embedding" (none before card format 3)."""
        return tuple(name for name in (CAM_OUTPUT, EMBEDDING_OUTPUT) if self.card.output(name) is not None)

    def explain(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One run with every output: probabilities [N, K] and each extra output the graph has (its
        embedding [N, C], top-k maps [N, k, h, w] and their classes [N, k]). The graph computes them on
        every run anyway; this run only also copies them out. On the sized path it runs at its batch
        size's session and buffers, like any batch; otherwise on the session of any batch size."""
        if self.runner is not None and self.runner.extras:
            outputs = self.runner.run_all(batch)
        else:
            names = [self.card.output_name, *(extra.name for extra in self.card.extra_outputs)]
            values = self.session.run(names, {self.card.input_name: batch.astype(self.input_dtype, copy=False)})
            outputs = dict(zip(names, values))
        outputs["probabilities"] = _softmax(outputs.pop(self.card.output_name))
        return outputs

    def probabilities_of(self, arrays: list[np.ndarray]) -> np.ndarray:
        """probabilities() of single inputs stacked straight into the sized path's buffer (runner only)."""
        return _softmax(self.runner.run_arrays(arrays))

    def warm_up(self, batch_sizes: tuple[int, ...], runs: int) -> float:
        """Run zeros through every batch shape the batcher will use first; returns seconds taken.

        On the sized path every size up to the largest batch is warmed: a session's first run
        chooses its cuDNN algorithms (and captures its CUDA graph), which no request should wait for."""
        started = time.perf_counter()
        free_before = cuda.device_free_bytes(self.runner.device_id) if self.device == "cuda" else None
        prep = self.card.preprocessing
        if self.runner is not None:
            batch_sizes = self.runner.sizes_up_to(max(batch_sizes))
        for size in batch_sizes:
            batch = np.zeros(prep.input_shape(size), dtype=self.input_dtype)
            for _ in range(runs):
                self.probabilities(batch)
        if free_before is not None and self.device_memory_bytes is not None:  # the arena's activations
            self.device_memory_bytes += free_before - cuda.device_free_bytes(self.runner.device_id)
        self.warm = True
        return time.perf_counter() - started


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float32, copy=False)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def model_threads(config: ServeConfig) -> int:
    """Intra-op threads for each model's session: the configured number, or every available CPU.

    Every session gets every core: a disjoint share per model cost a model serving alone half the
    machine, while the isolation it was for comes from the fair decode queue (pipeline.py); with
    `--instances N`, N runs of one model share the cores equally. The measurements behind both are
    in docs/robustness.md (Two models at once) and docs/performance-per-image.md (two instances).
    """
    return config.intra_op_threads or max(1, available_cpus() // config.instances)


def session_options(config: ServeConfig, threads: int | None = None) -> ort.SessionOptions:
    """Threads and optimisation for one session; the batcher runs at most `instances` batches of a
    model at once, each on its share of the cores (model_threads)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or model_threads(config)
    # A straight-line graph, each run on its own caller's thread: inter-op parallelism has nothing to do.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads spin by default, burning the cores the decode pool needs between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: the CUDA fallback is reported by us, as a warning
    return options


def device_of(providers) -> str:
    """"cuda" when ONNX Runtime placed the graph on its CUDA provider, else "cpu"."""
    return "cuda" if PROVIDERS["cuda"] in providers else "cpu"


def provider_list(requested: tuple[str, ...]) -> list[str]:
    """ONNX Runtime provider names for the requested short names, keeping those this build has and,
    for CUDA, only where the NVIDIA driver reports a GPU (asked once, before ONNX Runtime is)."""
    available = set(ort.get_available_providers())
    chosen = [PROVIDERS[name] for name in requested if PROVIDERS[name] in available]
    if PROVIDERS["cuda"] in chosen:
        gpu = cuda.probe()
        if gpu.usable:
            # onnxruntime-gpu 1.31 warns "No registered plugin EP device found for
            # 'CUDAExecutionProvider'" at every session (seen on the H200) and then uses CUDA all the
            # same: keep its default logger to errors, as the sessions' own loggers are.
            ort.set_default_logger_severity(3)
            _preload_cuda()
        else:
            _say_no_gpu(gpu.reason)
            chosen.remove(PROVIDERS["cuda"])
    return chosen or [PROVIDERS["cpu"]]


def providers_with_options(config: ServeConfig, graphs: bool = False) -> list:
    """provider_list with the CUDA provider's serving options (service.engine.cuda) attached."""
    options = cuda.provider_options(
        config.cuda_device_id, config.cudnn_conv_algo_search, config.cuda_arena_extend_strategy, graphs,
        config.cuda_prefer_nhwc,
    )
    return [(name, options) if name == PROVIDERS["cuda"] else name for name in provider_list(config.providers)]


@functools.cache
def _say_no_gpu(reason: str) -> None:
    """The one line a CPU-only machine gets instead of ONNX Runtime's errors for every model."""
    log.warning("CUDA requested but %s: serving on the CPU", reason, extra={"reason": reason})


@functools.cache
def _preload_cuda() -> None:
    """Once per process: onnxruntime-gpu finds the CUDA and cuDNN libraries that pip installs
    (nvidia-* wheels) only once they are preloaded; without them its CUDA provider fails to load."""
    if not hasattr(ort, "preload_dlls"):  # before onnxruntime 1.21
        return
    try:
        ort.preload_dlls()
    except Exception as error:  # noqa: BLE001 - a missing library only means no CUDA
        log.warning("onnxruntime.preload_dlls() failed, CUDA may be unavailable: %s", error)


def discover(models_dir: Path) -> list[Path]:
    """The model files in a folder written by resnet-export: every <name>/model.onnx, sorted."""
    if not models_dir.is_dir():
        raise ModelLoadError(f"models folder {str(models_dir)!r} does not exist or is not a folder")
    paths = sorted(models_dir.glob("*/model.onnx"))
    if not paths:
        raise ModelLoadError(f"models folder {str(models_dir)!r} holds no <name>/model.onnx (run resnet-export)")
    return paths


def load_model(path: Path, config: ServeConfig, threads: int | None = None) -> LoadedModel:
    """One session with its card, checked against the graph's real input and output."""
    requested = providers_with_options(config)
    on_gpu = any(isinstance(p, tuple) and p[0] == PROVIDERS["cuda"] for p in requested)
    free_before = cuda.device_free_bytes(config.cuda_device_id) if on_gpu else None
    options = session_options(config, threads)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=requested)
    except Exception as error:  # noqa: BLE001 - ORT raises its own types for bad files
        raise ModelLoadError(f"ONNX Runtime cannot load {str(path)!r}: {str(error).splitlines()[0]}") from None
    try:
        card = ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)
    except ArtifactError as error:
        raise ModelLoadError(f"{str(path)!r}: {error}") from None
    inputs = {node.name: node for node in session.get_inputs()}
    outputs = {node.name: node for node in session.get_outputs()}
    if card.input_name not in inputs or card.output_name not in outputs:
        raise ModelLoadError(
            f"{str(path)!r}: the card names input {card.input_name!r} and output {card.output_name!r}, "
            f"the graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}"
        )
    node = inputs[card.input_name]
    shape = card.preprocessing.input_shape()
    if len(node.shape) != 4 or tuple(node.shape[1:]) != shape[1:] or node.type not in _CARD_DTYPES[card.input_dtype]:
        raise ModelLoadError(
            f"{str(path)!r}: input {node.name!r} is {node.type} {node.shape}, but its card says "
            f"{card.input_dtype} [{', '.join(map(str, shape))}]"
        )
    providers = tuple(session.get_providers())
    asked_cuda = any(p == PROVIDERS["cuda"] or (isinstance(p, tuple) and p[0] == PROVIDERS["cuda"]) for p in requested)
    if asked_cuda and device_of(providers) != "cuda":
        # The driver has a GPU, yet ONNX Runtime fell back (CUDA or cuDNN libraries missing, say).
        log.warning(
            "model %s: a GPU is present but ONNX Runtime could not use its CUDA provider; running on %s",
            card.name,
            ", ".join(providers),
            extra={"model": card.name, "providers": list(providers)},
        )
    model = LoadedModel(card, session, path, providers, ORT_DTYPES[node.type])
    if model.device == "cuda" or config.sized_on_cpu:
        model.runner = sized_runner(model, config, threads)
    if free_before is not None and model.device == "cuda":
        model.device_memory_bytes = free_before - cuda.device_free_bytes(config.cuda_device_id)
    return model


def sized_runner(model: LoadedModel, config: ServeConfig, threads: int | None = None) -> sized.SizedRunner:
    """The sized path for a loaded model: config.cuda_batch_sizes, one session per size or the model's own
    session for all (cuda_sessions), CUDA graphs if asked and capturable (one warning line if not)."""
    card, path = model.card, model.path
    (node,) = [n for n in model.session.get_inputs() if n.name == card.input_name]
    batch_dim = node.shape[0]
    if not isinstance(batch_dim, str):  # our exports name it "batch"; a fixed one leaves nothing to override
        raise ModelLoadError(f"{str(path)!r}: input {node.name!r} has a fixed batch dimension {batch_dim!r}")
    device = model.device

    def build(graphs: bool) -> dict[int, ort.InferenceSession]:
        providers = providers_with_options(config, graphs) if device == "cuda" else [PROVIDERS["cpu"]]
        if config.cuda_sessions == "shared" and not graphs:
            return dict.fromkeys(config.cuda_batch_sizes, model.session)
        if config.cuda_sessions == "shared":  # graphs need their own session: one graph per size, by gpu_graph_id
            shared = ort.InferenceSession(str(path), sess_options=session_options(config, threads), providers=providers)
            return dict.fromkeys(config.cuda_batch_sizes, shared)
        sessions = {}
        for size in config.cuda_batch_sizes:
            options = session_options(config, threads)
            options.add_free_dimension_override_by_name(batch_dim, size)  # this session sees one shape
            sessions[size] = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        return sessions

    graphs = config.cuda_graphs and device == "cuda"
    try:
        sessions = build(graphs)
    except Exception as error:  # noqa: BLE001 - ORT refuses graphs for graphs with nodes off the GPU, say
        if not graphs:
            raise ModelLoadError(f"ONNX Runtime cannot load {str(path)!r} at fixed batch sizes: "
                                 f"{str(error).splitlines()[0]}") from None
        log.warning("model %s: CUDA graphs refused (%s): running without CUDA graphs",
                    card.name, str(error).splitlines()[0][:300], extra={"model": card.name})
        graphs, sessions = False, build(False)
    return sized.SizedRunner(sessions, card.input_name, card.output_name, device, config.cuda_device_id,
                             graphs, build, card.name, _extra_shapes(model))  # fmt: skip


def _extra_shapes(model: LoadedModel) -> dict[str, tuple[tuple[int, ...], type]]:
    """The card's extra outputs as the sized path binds them: shape without the batch axis, dtype.
    The maps' k is the graph's default (the service never feeds cam_k); a dimension the card leaves
    open otherwise means none is bound, and explanations run on the model's own session."""
    types = {node.name: node.type for node in model.session.get_outputs()}
    known = {"k": model.card.cam_k}
    shapes = {}
    for extra in model.card.extra_outputs:
        rest = tuple(known.get(d) if isinstance(d, str) else d for d in extra.shape[1:])
        if any(d is None for d in rest) or types.get(extra.name) not in ORT_DTYPES:
            return {}
        shapes[extra.name] = (rest, ORT_DTYPES[types[extra.name]])
    return shapes


def load_models(config: ServeConfig) -> dict[str, LoadedModel]:
    """Every model in config.models by its served name; the default model must be among them."""
    models: dict[str, LoadedModel] = {}
    paths = discover(config.models)
    threads = model_threads(config)
    for path in paths:
        model = load_model(path, config, threads)
        if model.name in models:
            raise ModelLoadError(f"two files serve the name {model.name!r}: {models[model.name].path} and {path}")
        models[model.name] = model
    if config.default_model and config.default_model not in models:  # empty: the ladder's shallowest
        raise ModelLoadError(
            f"default model {config.default_model!r} is not in {str(config.models)!r}; it has {sorted(models)}"
        )
    for model in models.values():
        runner = model.runner
        path_note = "" if runner is None else (
            f", batch sizes {','.join(map(str, runner.sizes))} "
            f"({'one shared session' if runner.shared else 'one session each'}"
            f"{', CUDA graphs' if runner.graphs else ''}{', page-locked buffers' if runner.pinned else ''})"
        )
        memory = model.device_memory_bytes
        log.info(
            "loaded %s (%s) from %s on %s, %d intra-op threads%s%s",
            model.name,
            model.card.precision,
            model.path,
            ", ".join(model.providers),
            threads,
            path_note,
            "" if memory is None else f", {memory / 2**20:.0f} MiB of GPU memory",
            extra={"model": model.name, "device": model.device, "providers": list(model.providers),
                   "device_memory_bytes": memory},
        )
    return models
