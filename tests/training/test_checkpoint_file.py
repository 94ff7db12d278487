"""The checkpoint file itself: written atomically, readable by other users like any file we write."""

import os
import stat

import torchvision

from artifact import Preprocessing
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
