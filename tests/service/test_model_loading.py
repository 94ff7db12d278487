"""resnet-serve refuses a models folder it cannot trust, before the port opens, with one line naming
the file and the problem (service.engine.runtime.load_models). The model files are tiny real ONNX graphs
(average pool + a 3x2 matrix) with real model cards, so each refusal is ONNX Runtime's real answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from artifact import PREFIX, FORMAT_VERSION, ModelCard, Preprocessing
from service.cli import main
from service.config import ServeConfig
from service.engine.runtime import ModelLoadError, load_models

SIDE = 8


def _card(name: str, **changes) -> dict[str, str]:
    card = ModelCard(name=name, arch="resnet18", num_classes=2, class_ids=("a", "b"), class_names=("A", "B"),
                     preprocessing=Preprocessing.for_input_size(SIDE, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
                     precision="fp32", source_sha256="0" * 64, val_top1=None, val_top5=None, torch_version="-",
                     onnx_version=onnx.__version__, exported_at="2026-01-01T00:00:00+00:00")
    return {**card.to_metadata(), **{PREFIX + k: v for k, v in changes.items()}}


def write_model(folder: Path, name: str, metadata: dict[str, str] | None, side: int = SIDE, input_name="input") -> Path:
    """folder/name/model.onnx: logits = mean over pixels of the input, times a 3x2 matrix."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", [input_name], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 3, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(np.ones((3, 2), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    path = folder / name / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(model, path)
    return path


def refusal(folder: Path, default: str = "good") -> str:
    with pytest.raises(ModelLoadError) as error:
        load_models(ServeConfig(models=folder, default_model=default, providers=("cpu",), intra_op_threads=1))
    return str(error.value)


@pytest.fixture
def folder(tmp_path) -> Path:
    write_model(tmp_path, "good", _card("good"))  # a valid model beside each bad one: one bad file is enough
    return tmp_path


def test_a_valid_folder_loads(folder):
    models = load_models(ServeConfig(models=folder, default_model="good", providers=("cpu",), intra_op_threads=1))
    assert list(models) == ["good"] and models["good"].card.preprocessing.input_size == SIDE


def test_a_file_onnx_runtime_cannot_parse(folder):
    (folder / "junk").mkdir()
    (folder / "junk" / "model.onnx").write_bytes(b"not a protobuf at all")
    assert "ONNX Runtime cannot load" in refusal(folder) and "junk/model.onnx" in refusal(folder)


def test_a_model_without_a_card(folder):
    write_model(folder, "bare", None)
    assert f"lacks '{PREFIX}format_version': not exported by resnet-export?" in refusal(folder)


def test_a_card_of_a_newer_format(folder):
    write_model(folder, "future", _card("future", format_version=str(FORMAT_VERSION + 1)))
    assert f"model metadata format {FORMAT_VERSION + 1} is newer than this reader" in refusal(folder)


def test_a_malformed_card(folder):
    write_model(folder, "mangled", _card("mangled", class_names="[oops"))
    assert f"'{PREFIX}class_names' is malformed" in refusal(folder)


def test_a_card_naming_an_input_the_graph_lacks(folder):
    write_model(folder, "renamed", _card("renamed"), input_name="pixels")
    assert "the card names input 'input' and output 'logits', the graph has inputs ['pixels']" in refusal(folder)


def test_a_graph_whose_input_size_disagrees_with_the_card(folder):
    write_model(folder, "resized", _card("resized"), side=SIDE * 2)
    assert f"but its card says float32 [batch, 3, {SIDE}, {SIDE}]" in refusal(folder)


def test_two_files_serving_one_name(folder):
    write_model(folder, "copy", _card("good"))
    assert "two files serve the name 'good'" in refusal(folder)


def test_a_default_model_not_in_the_folder(folder):
    assert "default model 'resnet50' is not in" in refusal(folder, default="resnet50")


def test_the_cli_reports_a_refusal_in_one_line_with_exit_2(folder, capsys):
    write_model(folder, "future", _card("future", format_version="99"))
    assert main(["--models", str(folder), "--default-model", "good", "--providers", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resnet-serve: error: ") and "is newer than this reader" in err
