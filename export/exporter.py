"""resnet-export's pipeline: checkpoint -> ONNX graph -> verified (-> fp16 | int8) -> one atomic file.

Every check runs before anything touches the models folder, so a refused export writes nothing and
replaces nothing; the file itself is written to a temp name beside its destination and renamed.

    from export.exporter import export_checkpoint
    path = export_checkpoint("checkpoints/resnet18/checkpoint.pt", "models", precision="int8")
"""

from __future__ import annotations

import datetime
import os
from dataclasses import replace
from pathlib import Path

import onnx
import torch

from artifact import CAM_K_INPUT, ArtifactError, ModelCard, Preprocessing, git_commit, write_atomically
from export import explain, fp16, graph, images, int8, verify, verify_explain
from export.config import PARITY_BATCHES, ExportConfig, ExportError
from export.progress import Progress
from artifact import preprocess
from training import checkpoint, data, models

MODEL_FILE = "model.onnx"  # the service looks for MODELS_DIR/NAME/model.onnx


def export_checkpoint(checkpoint_path: str | os.PathLike, out_dir: str | os.PathLike, name: str | None = None,
                      precision: str = "fp32", opset: int = 18, calibration_data: str | None = None,
                      **settings) -> Path:
    """Export, verify and write MODELS_DIR/NAME/model.onnx; ExportError (nothing written) on refusal.

    `settings` are the remaining ExportConfig fields (calibration_images, eval_images, batch_size,
    progress)."""
    return run(ExportConfig(Path(checkpoint_path), Path(out_dir), name, precision, opset, calibration_data, **settings))


def run(config: ExportConfig) -> Path:
    """The whole export for one config; returns the written model's path."""
    progress = Progress(config.progress)
    _require_writable(config.out_dir)
    payload, digest = _load(config.checkpoint)
    arch, pre = payload["arch"], _input(Preprocessing.from_dict(payload["preprocessing"]), config.input)
    target = config.out_dir / config.model_name(arch) / MODEL_FILE
    _require_writable(target.parent)
    model = graph.with_input(_network(payload), pre)  # the torch reference takes the graph's input
    record, source = _data(config, payload, pre)  # before the slow steps: bad data fails fast
    val = _validation_set(record, source, payload, pre, required=config.precision != "fp32", progress=progress)

    with progress.step(f"exporting {arch} at {pre.input_size}x{pre.input_size} ({pre.input_dtype} {pre.layout} "
                       f"input) to ONNX opset {config.opset}"):
        try:
            fp32 = graph.to_onnx(model, pre, config.opset)
        except Exception as error:  # noqa: BLE001 - torch.export's failures have many types
            raise ExportError(f"torch.onnx.export failed for {arch}: {_first_line(error)}") from error
        verify.check_graph(fp32)
        if not graph.batch_dim(fp32):
            raise verify.VerificationError("the exported graph has a fixed batch size; expected a dynamic one")
        try:
            fp32, extras = explain.add_outputs(fp32)
        except explain.GraphShapeError as error:
            raise ExportError(f"cannot add the embedding and class activation maps to {arch}: {error}") from error
        verify.check_graph(fp32)

    reference = verify.session(fp32)
    with progress.step(f"checking fp32 parity with torch at batch {', '.join(map(str, PARITY_BATCHES))}"):
        if val is not None:
            inputs = images.first_images(val, max(PARITY_BATCHES))
        else:
            inputs = preprocess.random_batch(pre, max(PARITY_BATCHES))
        for p in verify.parity(model, reference, inputs):
            progress.say(f"  batch {p.batch}: max |ORT - torch| {p.max_abs_diff:.2e} (max |logit| "
                         f"{p.max_abs_logit:.3g}), top-5 identical"
                         + (f" up to ties within the tolerance in {p.top5_ties} image(s)" if p.top5_ties else ""))
        for p in verify_explain.parity(model, reference, inputs):
            progress.say(f"  batch {p.batch}: embedding max |ORT - torch| {p.embedding_diff:.2e}, class activation "
                         f"maps {p.cam_diff:.2e} (max |map| {p.cam_scale:.3g})")

    final = fp32
    if config.precision == "fp16":
        with progress.step("converting to fp16 (float32 input and output kept)"):
            final = fp16.to_fp16(fp32)
            verify.check_graph(final)
    elif config.precision == "int8":
        final = _quantize(fp32, record, source, pre, config, progress)
    if config.precision != "fp32":
        providers = verify.fp16_providers() if config.precision == "fp16" else verify.CPU
        indices = images.sample(val, config.eval_images)
        with progress.step(f"judging {config.precision} against fp32 on {len(indices)} validation images"):
            judgement = verify.judge(config.precision, reference, verify.session(final, providers),
                                     images.batches(val, indices, config.batch_size),
                                     on_batch=lambda n: progress.count(n, len(indices)))
        progress.say(judgement.summary())
        if judgement.maps is not None:
            progress.say(judgement.maps.summary())
        verify.require(judgement)

    card = _card(payload, digest, config.model_name(arch), config.precision, pre, extras)
    graph.attach_card(final, card)
    _write(final, target)
    progress.say(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return target


def _input(trained: Preprocessing, input_dtype: str) -> Preprocessing:
    """The checkpoint's recipe with the graph input the export makes: uint8 NHWC pixels,
    the layout a decoded image already has, or the pre-issue-16 float32 NCHW normalised tensor."""
    return replace(trained, input_dtype=input_dtype, layout="NHWC" if input_dtype == "uint8" else "NCHW")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _require_writable(folder: Path) -> None:
    """Refuse before the slow work when `folder` cannot be created or written into."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ExportError(f"cannot write to {str(folder)!r}: {str(probe)!r} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write to {str(folder)!r}: {str(probe)!r} is not writable")


def _load(path: Path) -> tuple[dict, str]:
    try:
        payload = checkpoint.load(path)
    except checkpoint.CheckpointError as error:
        raise ExportError(str(error)) from error
    # Hash what was loaded; the card records it so a served model names its exact source.
    return payload, checkpoint.sha256(path)


def _network(payload: dict) -> torch.nn.Module:
    """The checkpoint's network with its weights, in eval mode."""
    try:
        model = models.build(payload["arch"], payload["num_classes"], shortcut=payload.get("shortcut"))
    except ValueError as error:
        raise ExportError(f"checkpoint names an arch this build cannot make: {_first_line(error)}") from error
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as error:
        raise ExportError(f"checkpoint weights do not fit {payload['arch']}: {_first_line(error)}") from error
    bad = checkpoint.non_finite(payload["model"])
    if bad:
        raise ExportError(f"checkpoint weights hold NaN or infinity in {', '.join(bad[:3])}"
                          f"{' ...' if len(bad) > 3 else ''} (a diverged or damaged run)")
    return model.eval()


def _data(config: ExportConfig, payload: dict, pre: Preprocessing) -> tuple[dict, str]:
    """The dataset record that calibrates and judges, and how to name it in messages.

    --calibration-data replaces the recorded dataset for both: a checkpoint imported from
    torchvision's ImageNet weights records no images, so `--calibration-data /data/imagenet` is how
    its int8 and fp16 exports get training images to calibrate on and val images to be judged on."""
    if config.calibration_data is None:
        return payload["dataset"], "the recorded dataset"
    try:
        return data.record_for(config.calibration_data, input_size=pre.input_size), repr(config.calibration_data)
    except data.DataError as error:
        raise ExportError(f"--calibration-data: {_first_line(error)}") from error


def _validation_set(record: dict, source: str, payload: dict, pre: Preprocessing, required: bool, progress: Progress):
    """The val split of `record`, checked to label classes in the checkpoint's order.

    fp32 parity can run on seeded noise when the data is not on this machine (a checkpoint imported
    from torchvision's ImageNet weights, say); fp16 and int8 need labelled images, so they refuse."""
    try:
        val = images.load_split(record, "val", pre, f"verification ({source})")
    except ExportError as error:
        if required:
            raise
        progress.say(f"{error}; checking fp32 parity on seeded random inputs instead")
        return None
    ids = getattr(val, "class_ids", None)
    if ids is not None and list(ids) != list(payload["class_ids"]):
        raise ExportError(f"the classes of {source} {list(ids)[:5]}... differ from the checkpoint's "
                          f"{payload['class_ids'][:5]}...: its validation labels cannot judge this model")
    return val


def _quantize(fp32: onnx.ModelProto, record: dict, source: str, pre: Preprocessing, config: ExportConfig,
              progress: Progress) -> onnx.ModelProto:
    """Static int8 calibrated on training images of `record`."""
    train = images.load_split(record, "train", pre, f"int8 calibration ({source})")
    indices = images.sample(train, config.calibration_images)
    with progress.step(f"calibrating int8 on {len(indices)} training images of {source}"):
        batches = images.batches(train, indices, config.batch_size)
        counted = _counting(batches, len(indices), progress)
        try:
            # the graph's input: pixels; the maps' own nodes stay float (their inputs are dequantized)
            quantized = int8.to_int8(fp32, graph.INPUT_NAME, counted, exclude=explain.node_names(fp32))
        except Exception as error:  # noqa: BLE001 - the quantizer raises many types
            raise ExportError(f"int8 quantization failed: {_first_line(error)}") from error
        verify.check_graph(quantized)
    return quantized


def _counting(batches, total: int, progress: Progress):
    done = 0
    progress.count(0, total)
    for images_, _labels in batches:
        yield images_
        done += len(images_)
        progress.count(done, total)


def _card(payload: dict, digest: str, name: str, precision: str, pre: Preprocessing, extras) -> ModelCard:
    metrics = payload["metrics"]
    try:
        return ModelCard(
            name=name,
            arch=payload["arch"],
            shortcut=payload.get("shortcut"),
            num_classes=payload["num_classes"],
            class_ids=tuple(payload["class_ids"]),
            class_names=tuple(payload["class_names"]),
            preprocessing=pre,
            precision=precision,
            source_sha256=digest,
            val_top1=metrics.get("val_top1"),
            val_top5=metrics.get("val_top5"),
            torch_version=torch.__version__,
            onnx_version=onnx.__version__,
            exported_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            git_commit=git_commit(),
            extra_outputs=extras,
            cam_k_input=CAM_K_INPUT,
        )
    except ArtifactError as error:
        raise ExportError(f"checkpoint cannot describe an artifact: {error}") from error


def _write(proto: onnx.ModelProto, target: Path) -> None:
    """Temp file beside the target, fsync, rename; on failure remove the temp file and any folder
    this call created, so a failed write leaves the models folder as it was."""
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, lambda f: f.write(proto.SerializeToString()))
    except OSError as error:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                pass
        raise ExportError(f"cannot write {str(target)!r}: {error.strerror or error}") from error
