"""Exported models are readable by the serving user (the images run as uid 10001, not the exporter)."""

import os
import stat


def test_exported_model_is_readable_by_group_and_others(tiny_models_dir):
    umask = os.umask(0)
    os.umask(umask)
    for model in sorted(tiny_models_dir.glob("*/model.onnx")):
        assert stat.S_IMODE(model.stat().st_mode) == 0o666 & ~umask, model
