"""The JSON bodies the service answers with, as msgspec Structs (also the OpenAPI schema at /schema)."""

from __future__ import annotations

import msgspec
import numpy as np

from artifact import ModelCard


class ClassMap(msgspec.Struct):
    """Where the model saw a class: its activation map at the last block's resolution (cam=true)."""

    size: list[int]  # [h, w]
    values: str  # base64 of h*w bytes, row-major, 0..255 for the map normalised to [0, 1]
    located: bool  # False for a 1x1 or flat map: it carries no location


class Prediction(msgspec.Struct, omit_defaults=True):
    label: str  # human-readable class name
    class_id: str  # dataset id, e.g. a WordNet id "n01440764"
    class_index: int  # position in the model's logits
    probability: float  # softmax probability, 0..1
    cam: ClassMap | None = None  # cam=true: for the graph's top k classes (5 by default)
    cam_png: str | None = None  # cam_png=true: base64 PNG, the map over the crop the model saw


class CascadeStep(msgspec.Struct, omit_defaults=True):
    """How model=auto reached an image's answer (service/depth/cascade.py)."""

    path: list[str]  # the rungs the image ran on, shallowest first; the last one answered
    signal: str  # the confidence signal: max_softmax, margin or entropy
    confidence: float  # the signal on the answering rung's output
    threshold: float | None = None  # below it the answering rung escalates; absent on the last rung
    escalation_skipped: str | None = None  # "budget" or "overloaded": the threshold asked, the service did not
    calibrated: bool = True  # False: the thresholds are the documented default, not measured


class Abstention(msgspec.Struct, omit_defaults=True):
    """Why an answer is (or is not) to be trusted (service/depth/abstain.py)."""

    reason: str  # in words a person can read
    confidence: float | None = None  # the answering model's largest probability
    threshold: float | None = None  # its calibrated threshold; absent when uncalibrated


class Classification(msgspec.Struct, omit_defaults=True):
    """The answer for one image."""

    model: str
    predictions: list[Prediction]  # top_k, highest probability first
    cascade: CascadeStep | None = None  # model=auto only
    abstained: bool | None = None  # with abstain=true: the answer is below its model's calibrated confidence
    abstention: Abstention | None = None  # with abstain=true: why
    embedding: list[float] | None = None  # embedding=true: the answering model's L2-normalised pooled features


class ImageResult(msgspec.Struct, omit_defaults=True):
    predictions: list[Prediction]
    model: str | None = None  # model=auto only: the rung that answered this image
    cascade: CascadeStep | None = None  # model=auto only
    abstained: bool | None = None
    abstention: Abstention | None = None
    embedding: list[float] | None = None


class BatchClassification(msgspec.Struct):
    """The answer for several images in one multipart upload, in upload order."""

    model: str
    results: list[ImageResult]


class ClassInfo(msgspec.Struct):
    class_index: int
    class_id: str
    label: str


class ModelInfo(msgspec.Struct):
    name: str
    arch: str
    depth: int
    num_classes: int
    input_size: int  # side of the square network input, pixels
    resize_size: int  # shorter side before the center crop, pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    precision: str  # fp32, fp16 or int8
    providers: list[str]  # ONNX Runtime execution providers in use, in order
    source_sha256: str  # checksum of the checkpoint it was exported from
    val_top1: float | None  # recorded validation accuracy, percent
    val_top5: float | None
    exported_at: str
    default: bool  # whether requests that name no model get this one
    abstain_threshold: float | None  # calibrated abstention threshold (max softmax); None: uncalibrated
    explains: list[str]  # what cam= and embedding= can ask of it: "cam", "embedding"; [] for older files
    device_memory_bytes: int | None  # GPU memory its sessions take (loading and warm-up); null on the CPU
    max_batch_size: int  # most images in one inference (its device's default unless set)
    queue_size: int  # most images admitted before 503 (likewise)


class ModelDetail(ModelInfo):
    classes: list[ClassInfo]  # in logit order


class Rung(msgspec.Struct):
    """One step of the depth ladder (service/depth/ladder.py)."""

    name: str
    depth: int
    precision: str
    threshold: float | None  # model=auto escalates below it; None on the last rung
    gflops: float | None  # cost per image measured by resnet-calibrate; None without a cascade file
    batch_ms: float  # running estimate of one batch's inference time, ms (warm-up, then traffic)


class Auto(msgspec.Struct):
    """model=auto, also served at POST /models/auto/classify."""

    signal: str
    calibrated: bool  # False: "uncalibrated", the documented default thresholds
    calibration: str | None  # the cascade file read at start-up


class ModelList(msgspec.Struct, omit_defaults=True):
    default_model: str
    models: list[ModelInfo]
    ladder: list[Rung] | None = None  # shallowest first; `depth=` picks a rung
    ladder_rule: str | None = None  # "fastest variant per depth" or "--ladder"
    auto: Auto | None = None


class Health(msgspec.Struct, omit_defaults=True):
    status: str  # "live", "ready", "warming_up" or "failed"
    models: dict[str, bool]  # name -> warmed up
    failures: dict[str, str] = msgspec.field(default_factory=dict)  # model -> why its batching loop died


class ErrorDetail(msgspec.Struct):
    status: int
    code: str  # stable machine-readable name, e.g. "unknown_model"
    message: str
    request_id: str | None


class ErrorBody(msgspec.Struct):
    """Every error's shape (more members may follow `message`, e.g. `available` for unknown_model)."""

    error: ErrorDetail


def top_k(card: ModelCard, probabilities: np.ndarray, k: int) -> list[Prediction]:
    """The k most probable classes, highest first; ties go to the lower class index."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [Prediction(card.class_names[i], card.class_ids[i], int(i), float(probabilities[i])) for i in order.tolist()]


def model_info(
    card: ModelCard, providers, default: bool, detail: bool = False, abstain_threshold: float | None = None,
    device_memory_bytes: int | None = None, explains: tuple[str, ...] = (), max_batch_size: int = 0,
    queue_size: int = 0,
) -> ModelInfo:
    """A model's public description; with detail, its class list too."""
    prep = card.preprocessing
    fields = dict(
        name=card.name, arch=card.arch, depth=card.depth, num_classes=card.num_classes,
        input_size=prep.input_size, resize_size=prep.resize_size, mean=prep.mean, std=prep.std,
        interpolation=prep.interpolation, precision=card.precision, providers=list(providers),
        source_sha256=card.source_sha256, val_top1=card.val_top1, val_top5=card.val_top5,
        exported_at=card.exported_at, default=default, abstain_threshold=abstain_threshold, explains=list(explains),
        device_memory_bytes=device_memory_bytes, max_batch_size=max_batch_size, queue_size=queue_size,
    )  # fmt: skip
    if not detail:
        return ModelInfo(**fields)
    classes = [ClassInfo(i, cid, name) for i, (cid, name) in enumerate(zip(card.class_ids, card.class_names))]
    return ModelDetail(**fields, classes=classes)
