"""The model card inside the ONNX file, read back the way the torch-free service reads it."""

from __future__ import annotations

import datetime
from dataclasses import replace

import onnx
import onnxruntime as ort
import pytest
import torch

from artifact import ModelCard, Preprocessing
from training import checkpoint


@pytest.mark.parametrize("arch", ("resnet18", "resnet20"))
def test_card_round_trips_through_onnx_runtime_metadata(arch, tiny_checkpoints, tiny_models_dir):
    payload = checkpoint.load(tiny_checkpoints[arch])
    sess = ort.InferenceSession(str(tiny_models_dir / arch / "model.onnx"), providers=["CPUExecutionProvider"])
    card = ModelCard.from_metadata(sess.get_modelmeta().custom_metadata_map)

    assert (card.name, card.arch, card.depth, card.precision) == (arch, arch, int(arch[6:]), "fp32")
    assert card.num_classes == payload["num_classes"] == 10
    assert list(card.class_ids) == payload["class_ids"] and list(card.class_names) == payload["class_names"]
    trained = Preprocessing.from_dict(payload["preprocessing"])
    assert card.preprocessing == replace(trained, input_dtype="uint8", layout="NHWC")  # the default graph input
    assert card.source_sha256 == checkpoint.sha256(tiny_checkpoints[arch])
    assert (card.val_top1, card.val_top5) == (payload["metrics"]["val_top1"], payload["metrics"]["val_top5"])
    assert card.torch_version == torch.__version__ and card.onnx_version == onnx.__version__
    exported = datetime.datetime.fromisoformat(card.exported_at)
    assert exported.tzinfo is not None
    assert abs(datetime.datetime.now(datetime.timezone.utc) - exported) < datetime.timedelta(hours=2)
    assert (card.input_name, card.output_name) == (sess.get_inputs()[0].name, sess.get_outputs()[0].name)


def test_reduced_precision_cards_name_their_precision(reduced_models_dir):
    for name, precision in (("resnet20-fp16", "fp16"), ("resnet18-int8", "int8")):
        sess = ort.InferenceSession(str(reduced_models_dir / name / "model.onnx"), providers=["CPUExecutionProvider"])
        card = ModelCard.from_metadata(sess.get_modelmeta().custom_metadata_map)
        assert (card.name, card.precision) == (name, precision)


def test_name_flag_overrides_the_default_name(tiny_checkpoints, tmp_path):
    from export.exporter import export_checkpoint

    path = export_checkpoint(tiny_checkpoints["resnet20"], tmp_path, name="cifar-small", progress=False)
    assert path == tmp_path / "cifar-small" / "model.onnx"
    card = ModelCard.from_metadata({p.key: p.value for p in onnx.load(path).metadata_props})
    assert (card.name, card.arch, card.depth) == ("cifar-small", "resnet20", 20)
