"""The checkpoint file itself: written atomically, readable by other users like any file we write."""

import os
import stat
from dataclasses import replace

import pytest
import torch
import torchvision

from artifact import Preprocessing, git_commit
from training import checkpoint


def _payload():
    pre = Preprocessing.for_input_size(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return dict(arch="resnet18", num_classes=3, class_ids=["a", "b", "c"], class_names=["A", "B", "C"],
                preprocessing=pre.to_dict(), dataset={"kind": "synthetic"}, config={}, metrics={},
                model=torchvision.models.resnet18(num_classes=3).state_dict())


def test_saved_checkpoint_gets_the_umask_mode_not_mkstemps_0600(tmp_path):
    umask = os.umask(0o022)
    try:
        path = checkpoint.save(_payload(), tmp_path / "run" / "checkpoint.pt")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temp file left behind


def test_a_typed_checkpoint_round_trips_with_its_provenance_and_git_commit(tmp_path):
    built = checkpoint.Checkpoint.from_payload({"format": checkpoint.FORMAT, "version": 1, **_payload()})
    built = replace(built, metrics=checkpoint.Metrics(epoch=1, step=8, val_top1=50.0, val_top5=90.0),
                    provenance=checkpoint.Provenance.here("pytest"))
    loaded = checkpoint.Checkpoint.load(built.save(tmp_path / "checkpoint.pt"))
    assert loaded.metrics == built.metrics and loaded.provenance == built.provenance
    assert loaded.provenance.git_commit == git_commit() and loaded.num_classes == 3
    assert loaded.preprocessing == built.preprocessing and loaded.class_ids == ("a", "b", "c")


def test_a_checkpoint_from_before_provenance_and_metrics_were_typed_still_loads(tmp_path):
    # Format 1 as train.py wrote it before checkpoint.Checkpoint: provenance without git_commit,
    # metrics with only a step (saved by --save-every before the first validation).
    old = {"format": checkpoint.FORMAT, "version": 1, **_payload(), "metrics": {"step": 3},
           "provenance": {"created": "2026-01-01T00:00:00+00:00", "torch": "2.5.0", "torchvision": "0.20.0",
                          "host": "box", "command": "resnet-train", "world_size": 1, "device": "cpu"}}
    torch.save(old, tmp_path / "old.pt")
    loaded = checkpoint.Checkpoint.load(tmp_path / "old.pt")
    assert loaded.metrics.step == 3 and loaded.metrics.val_top1 is None and loaded.provenance.git_commit is None
    assert checkpoint.load(tmp_path / "old.pt")["metrics"] == {"step": 3}  # the dict view is the file, unchanged


@pytest.mark.parametrize(
    "change, message",
    [
        ({"version": 2}, "has checkpoint version 2, newer than this reader's 1"),
        ({"metrics": {"val_top1": "high"}}, "metrics.val_top1 must be int or float or None, got 'high'"),
        ({"metrics": {"val_top5": 140.0}}, "metrics.val_top5 must be a percentage in [0, 100], got 140.0"),
        ({"metrics": {"step": 2.5}}, "metrics.step must be int or None, got 2.5"),
        ({"metrics": {"loss": 1.0}}, "metrics has unknown keys ['loss']"),
        ({"metrics": [1, 2]}, "'metrics' must be dict, got list"),
        ({"provenance": {"torch": "2.5"}}, "provenance.created must be an ISO 8601 time, got None"),
        ({"provenance": {"created": "now", "world_size": "2"}}, "provenance.world_size must be int or None, got '2'"),
        ({"provenance": {"created": "now", "user": "me"}}, "provenance has unknown keys ['user']"),
        ({"preprocessing": {"input_size": 32}}, "preprocessing: preprocessing keys must be"),
        ({"class_ids": ["a", "b", 3]}, "class_ids must be strings, got 3"),
        ({"num_classes": 4}, "num_classes is 4 but it lists 3 class ids"),
        ({"train_state": [1]}, "'train_state' must be dict, got list"),
    ],
)
def test_loading_names_the_bad_nested_field(tmp_path, change, message):
    path = tmp_path / "bad.pt"
    torch.save({"format": checkpoint.FORMAT, "version": 1, **_payload(), **change}, path)
    with pytest.raises(checkpoint.CheckpointError) as error:
        checkpoint.load(path)
    assert message in str(error.value) and str(path) in str(error.value)
