"""The model card's reader refuses what it cannot trust and names the key: artifact.ModelCard.from_metadata."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import artifact
from artifact import PREFIX, ArtifactError, ModelCard, Preprocessing


def _card(**changes) -> ModelCard:
    values = dict(name="tiny", arch="resnet18", num_classes=2, class_ids=("a", "b"), class_names=("A", "B"),
                  preprocessing=Preprocessing.for_input_size(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
                  precision="fp32", source_sha256="0" * 64, val_top1=50.0, val_top5=100.0, torch_version="2.x",
                  onnx_version="1.x", exported_at="2026-01-01T00:00:00+00:00", git_commit="f" * 40)
    return ModelCard(**{**values, **changes})


def test_a_card_round_trips_through_its_metadata():
    card = _card()
    assert ModelCard.from_metadata(card.to_metadata()) == card
    assert all(isinstance(v, str) for v in card.to_metadata().values())


def test_a_card_written_before_the_git_commit_was_recorded_still_reads():
    props = _card().to_metadata()
    del props[PREFIX + "git_commit"]
    assert ModelCard.from_metadata(props).git_commit is None


@pytest.mark.parametrize("key", ["format_version", "name", "num_classes", "class_ids", "preprocessing", "output_name"])
def test_a_missing_key_is_named(key):
    props = _card().to_metadata()
    del props[PREFIX + key]
    with pytest.raises(ArtifactError, match=f"lacks '{PREFIX}{key}'"):
        ModelCard.from_metadata(props)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("format_version", "one", "'resnet_serving.format_version' is malformed: 'one'"),
        ("num_classes", "ten", "'resnet_serving.num_classes' is malformed: 'ten'"),
        ("class_ids", "[a, b", "'resnet_serving.class_ids' is malformed"),
        ("val_top1", "high", "'resnet_serving.val_top1' is malformed"),
        ("git_commit", "{", "'resnet_serving.git_commit' is malformed"),
        ("num_classes", "3", "num_classes is 3 but there are 2 class ids"),
        ("precision", "int4", "precision must be one of"),
        ("preprocessing", json.dumps({"input_size": 32}), "preprocessing keys must be"),
        ("preprocessing", json.dumps({"input_size": 32, "resize_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]}),
         "resize_size must be an int >= input_size (32), got 8"),
        ("arch", "vgg16", "arch 'vgg16' is not of the form resnetN or plainN"),
        ("git_commit", "42", "git_commit must be a string or None, got 42"),
    ],
)
def test_a_malformed_value_is_named(key, value, message):
    props = {**_card().to_metadata(), PREFIX + key: value}
    with pytest.raises(ArtifactError) as error:
        ModelCard.from_metadata(props)
    assert message in str(error.value)


def test_a_newer_format_version_is_refused():
    props = {**_card().to_metadata(), PREFIX + "format_version": str(artifact.FORMAT_VERSION + 1)}
    with pytest.raises(ArtifactError, match=f"format {artifact.FORMAT_VERSION + 1} is newer than this reader"):
        ModelCard.from_metadata(props)


def test_git_commit_names_the_checked_out_commit_and_none_outside_git(tmp_path):
    repo = Path(artifact.__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode:
        assert artifact.git_commit() is None  # e.g. a source tarball: no .git
    else:
        assert artifact.git_commit().removesuffix("-dirty") == head.stdout.strip()
    assert artifact.git_commit(tmp_path) is None


def _explained(**changes) -> ModelCard:
    extras = (artifact.ExtraOutput("embedding", "float32", ("batch", 512)),
              artifact.ExtraOutput("cam", "float32", ("batch", "k", 7, 7)),
              artifact.ExtraOutput("cam_classes", "int64", ("batch", "k")))
    return _card(extra_outputs=extras, cam_k_input="cam_k", **changes)


def test_a_card_with_extra_outputs_round_trips_and_says_what_it_can_answer():
    card = _explained()
    assert ModelCard.from_metadata(card.to_metadata()) == card
    assert (card.embedding_size, card.cam_size, card.output("cam").shape) == (512, (7, 7), ("batch", "k", 7, 7))
    assert (_card().embedding_size, _card().cam_size, _card().output("cam")) == (None, None, None)


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_card_of_an_older_format_reads_as_having_no_extra_outputs(version):
    props = _explained().to_metadata()
    del props[PREFIX + "extra_outputs"], props[PREFIX + "cam_k_input"]
    props[PREFIX + "format_version"] = version
    card = ModelCard.from_metadata(props)
    assert (card.extra_outputs, card.cam_k_input, card.cam_size) == ((), None, None)


def test_a_format_3_card_must_list_its_extra_outputs():
    props = _explained().to_metadata()
    del props[PREFIX + "extra_outputs"]
    with pytest.raises(ArtifactError, match=f"lacks '{PREFIX}extra_outputs'"):
        ModelCard.from_metadata(props)


@pytest.mark.parametrize(("raw", "message"), [
    ('[{"name": "cam", "dtype": "float64", "shape": ["batch"]}]', "dtype must be one of"),
    ('[{"name": "cam", "dtype": "float32", "shape": [0]}]', "shape must hold positive ints"),
    ('[{"name": "cam"}]', "must have keys name, dtype, shape"),
    ('{"cam": 1}', "must be a list"),
])
def test_a_malformed_extra_output_is_named(raw, message):
    props = {**_explained().to_metadata(), PREFIX + "extra_outputs": raw}
    with pytest.raises(ArtifactError, match=message):
        ModelCard.from_metadata(props)


def test_cam_k_input_goes_with_a_cam_output():
    with pytest.raises(ArtifactError, match="cam_k_input"):
        _card(cam_k_input="cam_k")
    with pytest.raises(ArtifactError, match="output names must differ"):
        _card(extra_outputs=(artifact.ExtraOutput("logits", "float32", ("batch", 2)),))
