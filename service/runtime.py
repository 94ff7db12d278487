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

from artifact import ArtifactError, ModelCard
from service.config import ServeConfig, available_cpus

log = logging.getLogger("service.runtime")

PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


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

    @property
    def name(self) -> str:
        return self.card.name

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax over the logits of a [N, 3, S, S] batch: [N, num_classes] float32, rows sum to 1."""
        (logits,) = self.session.run(
            [self.card.output_name], {self.card.input_name: batch.astype(self.input_dtype, copy=False)}
        )
        logits = logits.astype(np.float32, copy=False)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def warm_up(self, batch_sizes: tuple[int, ...], runs: int) -> float:
        """Run zeros through every batch shape the batcher will use first; returns seconds taken."""
        started = time.perf_counter()
        side = self.card.preprocessing.input_size
        for size in batch_sizes:
            batch = np.zeros((size, 3, side, side), dtype=np.float32)
            for _ in range(runs):
                self.probabilities(batch)
        self.warm = True
        return time.perf_counter() - started


def model_threads(config: ServeConfig, models: int) -> int:
    """Intra-op threads for each of `models` sessions: the configured number, or the CPUs shared out.

    Every session's pool defaulted to every core, so two busy models ran 2 x cores threads on the
    cores, each batch slowed by the other's (issue 12: one resnet18 client's p50 went from 7 ms to
    147-176 ms while 32 clients flooded resnet152). Disjoint shares isolate the models; a shared
    inference lock would instead make a resnet18 request wait out a whole resnet152 batch.
    Measurements: docs/robustness.md, section Two models at once.
    """
    return config.intra_op_threads or max(1, available_cpus() // max(1, models))


def session_options(config: ServeConfig, threads: int | None = None) -> ort.SessionOptions:
    """Threads and optimisation for one session; one batch runs at a time per model (the batcher)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or model_threads(config, 1)
    # One batch at a time per model and a straight-line graph: inter-op parallelism has nothing to do.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads spin by default, burning the cores the decode pool needs between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: the CUDA fallback is reported by us, as a warning
    return options


def provider_list(requested: tuple[str, ...]) -> list[str]:
    """ONNX Runtime provider names for the requested short names, keeping those this build has."""
    available = set(ort.get_available_providers())
    chosen = [PROVIDERS[name] for name in requested if PROVIDERS[name] in available]
    if "cuda" in requested and PROVIDERS["cuda"] in available:
        _preload_cuda()
    return chosen or [PROVIDERS["cpu"]]


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
    requested = provider_list(config.providers)
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
    side = card.preprocessing.input_size
    if len(node.shape) != 4 or list(node.shape[1:]) != [3, side, side] or node.type not in _ORT_DTYPES:
        raise ModelLoadError(
            f"{str(path)!r}: input {node.name!r} is {node.type} {node.shape}, expected float [batch, 3, {side}, {side}]"
        )
    providers = tuple(session.get_providers())
    if "cuda" in config.providers and PROVIDERS["cuda"] not in providers:
        log.warning(
            "model %s: CUDA was requested but ONNX Runtime could not use it; running on %s",
            card.name,
            ", ".join(providers),
            extra={"model": card.name, "providers": list(providers)},
        )
    return LoadedModel(card, session, path, providers, _ORT_DTYPES[node.type])


def load_models(config: ServeConfig) -> dict[str, LoadedModel]:
    """Every model in config.models by its served name; the default model must be among them."""
    models: dict[str, LoadedModel] = {}
    paths = discover(config.models)
    threads = model_threads(config, len(paths))
    for path in paths:
        model = load_model(path, config, threads)
        if model.name in models:
            raise ModelLoadError(f"two files serve the name {model.name!r}: {models[model.name].path} and {path}")
        models[model.name] = model
    if config.default_model not in models:
        raise ModelLoadError(
            f"default model {config.default_model!r} is not in {str(config.models)!r}; it has {sorted(models)}"
        )
    for model in models.values():
        log.info(
            "loaded %s from %s on %s, %d intra-op threads", model.name, model.path, ", ".join(model.providers), threads,
            extra={"model": model.name},
        )
    return models
