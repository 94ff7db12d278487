"""The explanation outputs: embedding and class activation maps in fp32, fp16 and int8 files, held to
PyTorch's, recorded in the card; and a file exported before them still loads with a card saying so."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from artifact import PREFIX, ModelCard
from service.config import ServeConfig
from service.engine.runtime import load_model
from training import checkpoint, models

EXTRAS = ["logits", "embedding", "cam", "cam_classes"]
# arch -> (embedding width, map side) of the tiny 32-px models: resnet18's ImageNet stem leaves 1x1
# at its last block, the CIFAR resnet20 8x8.
SHAPES = {"resnet18": (512, 1), "resnet20": (64, 8)}


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _card(sess: ort.InferenceSession) -> ModelCard:
    return ModelCard.from_metadata(sess.get_modelmeta().custom_metadata_map)


@pytest.fixture(scope="module")
def int8_resnet20(tiny_checkpoints, tmp_path_factory):
    """resnet20 in int8: its 8x8 maps are what the int8 gate on maps is about (resnet18's are 1x1)."""
    from export.exporter import export_checkpoint

    return export_checkpoint(tiny_checkpoints["resnet20"], tmp_path_factory.mktemp("int8"), precision="int8",
                             calibration_images=128, eval_images=300, progress=False)


def _files(tiny_models_dir, reduced_models_dir, int8_resnet20):
    return {
        ("resnet18", "fp32"): tiny_models_dir / "resnet18" / "model.onnx",
        ("resnet20", "fp32"): tiny_models_dir / "resnet20" / "model.onnx",
        ("resnet20", "fp16"): reduced_models_dir / "resnet20-fp16" / "model.onnx",
        ("resnet18", "int8"): reduced_models_dir / "resnet18-int8" / "model.onnx",
        ("resnet20", "int8"): int8_resnet20,
    }


def test_every_precision_has_the_outputs_with_their_shapes_and_the_card_lists_them(
        tiny_models_dir, reduced_models_dir, int8_resnet20, torch_reference, tiny_checkpoints):
    _, images, _ = torch_reference(tiny_checkpoints["resnet20"])
    for (arch, precision), path in _files(tiny_models_dir, reduced_models_dir, int8_resnet20).items():
        sess = _session(path)
        width, side = SHAPES[arch]
        assert [o.name for o in sess.get_outputs()] == EXTRAS  # the logits stay first
        assert [i.name for i in sess.get_inputs()] == ["input"]  # cam_k is optional: it has a default
        logits, embedding, cam, classes = sess.run(EXTRAS, {"input": images[:3]})
        assert embedding.shape == (3, width) and embedding.dtype == np.float32
        assert cam.shape == (3, 5, side, side) and cam.dtype == np.float32
        assert classes.shape == (3, 5) and classes.dtype == np.int64
        np.testing.assert_array_equal(classes, np.argsort(-logits, axis=1, kind="stable")[:, :5])
        card = _card(sess)
        assert card.precision == precision
        assert [(e.name, e.dtype, e.shape) for e in card.extra_outputs] == [
            ("embedding", "float32", ("batch", width)),
            ("cam", "float32", ("batch", "k", side, side)),
            ("cam_classes", "int64", ("batch", "k")),
        ]
        assert (card.cam_k_input, card.embedding_size, card.cam_size) == ("cam_k", width, (side, side))


def test_cam_k_asks_for_the_maps_of_more_or_fewer_classes(tiny_models_dir, torch_reference, tiny_checkpoints):
    _, images, _ = torch_reference(tiny_checkpoints["resnet20"])
    sess = _session(tiny_models_dir / "resnet20" / "model.onnx")
    for k in (1, 10):
        cam, classes = sess.run(["cam", "cam_classes"], {"input": images[:4], "cam_k": np.array([k])})
        assert cam.shape == (4, k, 8, 8) and classes.shape == (4, k)
    assert sorted(classes[0]) == list(range(10))


@pytest.mark.parametrize("arch", ["resnet18", "resnet20"])
def test_fp32_embedding_and_maps_match_torch(arch, tiny_checkpoints, tiny_models_dir, torch_reference):
    pixel_net, images, _ = torch_reference(tiny_checkpoints[arch])
    net = pixel_net.network
    stage = net.layer4 if arch == "resnet18" else net.layers
    seen = {}
    hook = stage.register_forward_hook(lambda m, i, out: seen.__setitem__("features", out.numpy()))
    x = images[20:27]
    try:
        with torch.no_grad():
            pixel_net(torch.from_numpy(x))
    finally:
        hook.remove()
    features = seen["features"]
    weight, bias = net.fc.weight.detach().numpy(), net.fc.bias.detach().numpy()
    sess = _session(tiny_models_dir / arch / "model.onnx")
    logits, embedding, cam, classes = sess.run(EXTRAS, {"input": x, "cam_k": np.array([10])})
    expected_cam = np.einsum("nkc,nchw->nkhw", weight[classes], features)
    assert np.abs(embedding - features.mean(axis=(2, 3))).max() <= 1e-3 * np.abs(embedding).max()
    assert np.abs(cam - expected_cam).max() <= 1e-3 * np.abs(expected_cam).max()
    # Zhou et al.'s identity: each map's mean plus its class's bias is that class's logit.
    np.testing.assert_allclose(cam.mean(axis=(2, 3)) + bias[classes], np.take_along_axis(logits, classes, 1),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_maps_follow_fp32s(precision, tiny_models_dir, reduced_models_dir, int8_resnet20,
                                             torch_reference, tiny_checkpoints):
    _, images, _ = torch_reference(tiny_checkpoints["resnet20"])
    fp32 = _session(tiny_models_dir / "resnet20" / "model.onnx")
    other = _session(_files(tiny_models_dir, reduced_models_dir, int8_resnet20)[("resnet20", precision)])
    _, emb, cam, classes = fp32.run(EXTRAS, {"input": images})
    _, emb2, cam2, classes2 = other.run(EXTRAS, {"input": images, "cam_k": np.array([10])})
    n = len(images)
    at = np.argmax(classes2 == classes[:, :1], axis=1)  # fp32's top-1 class among the other's ten maps
    a, b = cam[:, 0].reshape(n, -1), cam2[np.arange(n), at].reshape(n, -1)
    r = np.array([np.corrcoef(a[i], b[i])[0, 1] for i in range(n)])
    cosine = (emb * emb2).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(emb2, axis=1)
    assert np.percentile(r, 5) >= (0.99 if precision == "fp16" else 0.95)
    # The other's peak cell holds within 5% of fp32's peak in fp32's own map (a near tie may swap).
    at_peak = a[np.arange(n), b.argmax(1)]
    assert (at_peak >= a.max(1) - 0.05 * (a.max(1) - a.min(1))).mean() >= (0.99 if precision == "fp16" else 0.9)
    assert cosine.min() >= (0.999 if precision == "fp16" else 0.99)


def test_the_int8_gate_reports_and_checks_the_maps(tiny_checkpoints, tmp_path, capsys):
    from export.cli import main

    code = main([str(tiny_checkpoints["resnet20"]), "--out", str(tmp_path), "--precision", "int8",
                 "--calibration-images", "64", "--eval-images", "100"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "int8 maps of fp32's top-1 class on 100 images: correlation with fp32 median" in err
    assert "embedding max |ORT - torch|" in err and "class activation maps" in err  # fp32 parity lines


def _old_file(tiny_checkpoints, tmp_path):
    """resnet20 as resnet-export wrote it before the extra outputs: logits only, a format-2 card."""
    from dataclasses import replace

    from artifact import Preprocessing
    from export import graph

    payload = checkpoint.load(tiny_checkpoints["resnet20"])
    net = models.build(payload["arch"], payload["num_classes"])
    net.load_state_dict(payload["model"])
    pre = replace(Preprocessing.from_dict(payload["preprocessing"]), input_dtype="uint8", layout="NHWC")
    proto = graph.to_onnx(graph.with_input(net.eval(), pre), pre, 18)
    card = ModelCard("resnet20-old", "resnet20", 10, tuple(payload["class_ids"]), tuple(payload["class_names"]), pre,
                     "fp32", "0" * 64, None, None, "t", "o", "2026-11-01T00:00:00+00:00")
    props = {k: v for k, v in card.to_metadata().items()
             if k not in (PREFIX + "extra_outputs", PREFIX + "cam_k_input")} | {PREFIX + "format_version": "2"}
    for key, value in sorted(props.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    path = tmp_path / "resnet20-old" / "model.onnx"
    path.parent.mkdir()
    onnx.save(proto, path)
    return path


def test_a_file_exported_before_the_outputs_loads_with_a_card_that_has_none(tiny_checkpoints, torch_reference, tmp_path):
    path = _old_file(tiny_checkpoints, tmp_path)
    assert json.loads(ModelCard.from_metadata({p.key: p.value for p in onnx.load(path).metadata_props})
                      .to_metadata()[PREFIX + "extra_outputs"]) == []
    model = load_model(path, ServeConfig(models=tmp_path, providers=("cpu",)))  # the service's own loader
    assert [o.name for o in model.session.get_outputs()] == ["logits"]
    card = model.card
    assert (card.extra_outputs, card.cam_k_input, card.cam_size, card.embedding_size) == ((), None, None, None)
    _, images, _ = torch_reference(tiny_checkpoints["resnet20"])
    probabilities = model.probabilities(images[:2])
    assert probabilities.shape == (2, 10) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
