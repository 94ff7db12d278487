"""The fp32 graph: same logits as torch, any batch size, one self-contained file, opset >= 18."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

ARCHS = ("resnet18", "resnet20")


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("batch", (1, 2, 7))
def test_onnx_logits_match_torch_on_val_images(arch, batch, tiny_checkpoints, tiny_models_dir, torch_reference):
    net, images, _ = torch_reference(tiny_checkpoints[arch])
    x = images[10 : 10 + batch]
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    (got,) = _session(tiny_models_dir / arch / "model.onnx").run(["logits"], {"input": x})
    assert got.shape == (batch, 10) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()
    np.testing.assert_array_equal(np.argsort(-got, axis=1)[:, :5], np.argsort(-expected, axis=1)[:, :5])


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_dimension_is_dynamic(arch, tiny_models_dir, torch_reference, tiny_checkpoints):
    _, images, _ = torch_reference(tiny_checkpoints[arch])
    sess = _session(tiny_models_dir / arch / "model.onnx")
    (shape_input,) = sess.get_inputs()
    assert shape_input.name == "input" and shape_input.shape[1:] == [32, 32, 3]  # NHWC pixels
    assert shape_input.type == "tensor(uint8)"
    assert isinstance(shape_input.shape[0], str)  # symbolic, not a number
    assert sess.get_outputs()[0].name == "logits"
    # Each image's logits do not depend on which batch it rides in (BatchNorm is folded, eval mode).
    (alone,) = sess.run(["logits"], {"input": images[:1]})
    for batch in (3, 16, 33):
        (out,) = sess.run(["logits"], {"input": images[:batch]})
        assert out.shape == (batch, 10)
        np.testing.assert_allclose(out[:1], alone, rtol=1e-4, atol=1e-4)


def test_model_is_one_self_contained_file_at_opset_18_or_newer(tiny_models_dir):
    assert sorted(p.name for p in tiny_models_dir.iterdir()) == ["resnet18", "resnet20"]
    for arch in ARCHS:
        folder = tiny_models_dir / arch
        assert [p.name for p in folder.iterdir()] == ["model.onnx"]  # no .data file, no temp file left
        model = onnx.load(folder / "model.onnx", load_external_data=False)
        assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
        onnx.checker.check_model(model, full_check=True)
        # BatchNorm folded into the convolutions: nothing training-mode left to go wrong at serving time.
        assert "BatchNormalization" not in {n.op_type for n in model.graph.node}


def test_opset_flag_sets_the_graph_opset(tiny_checkpoints, tmp_path):
    from export.exporter import export_checkpoint

    path = export_checkpoint(tiny_checkpoints["resnet20"], tmp_path, opset=20, progress=False)
    model = onnx.load(path)
    assert {o.domain: o.version for o in model.opset_import}[""] == 20
