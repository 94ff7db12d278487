"""Every refusal: one line on stderr, exit status 2, and the models folder exactly as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export.cli import main
from training import checkpoint

EXPORT = Path(sys.executable).parent / "resnet-export"  # the installed console script


class NotATensor:
    """A pickled object a weights-only load must refuse (torch.load would otherwise run its code)."""


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in folder.rglob("*")}


@pytest.fixture
def models_dir(tmp_path) -> Path:
    """A models folder that already serves a resnet20: a refused export must leave it alone."""
    folder = tmp_path / "models"
    (folder / "resnet20").mkdir(parents=True)
    (folder / "resnet20" / "model.onnx").write_bytes(b"the model being served")
    return folder


def _refused(argv: list[str], capsys, folder: Path) -> str:
    """Run the CLI in-process (quiet: no progress lines); check exit 2, exactly one stderr line,
    nothing on stdout, the folder unchanged."""
    before = _snapshot(folder)
    code = main([*argv, "--quiet"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.startswith("resnet-export: error: ") and captured.err.count("\n") == 1, captured.err
    assert _snapshot(folder) == before
    return captured.err.strip()


def test_missing_checkpoint_is_refused(models_dir, capsys, tmp_path):
    line = _refused([str(tmp_path / "nope.pt"), "--out", str(models_dir)], capsys, models_dir)
    assert "nope.pt" in line and "does not exist" in line


def test_truncated_checkpoint_is_refused(models_dir, capsys, tiny_checkpoints, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    data = tiny_checkpoints["resnet20"].read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    line = _refused([str(corrupt), "--out", str(models_dir)], capsys, models_dir)
    assert "corrupt.pt" in line and "weights-only" in line


def test_checkpoint_with_pickled_objects_fails_weights_only_loading(models_dir, capsys, tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": checkpoint.FORMAT, "payload": NotATensor()}, foreign)
    line = _refused([str(foreign), "--out", str(models_dir)], capsys, models_dir)
    assert "foreign.pt" in line and "weights-only" in line


def test_foreign_torch_file_is_refused(models_dir, capsys, tmp_path):
    state_dict_only = tmp_path / "state_dict.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, state_dict_only)
    line = _refused([str(state_dict_only), "--out", str(models_dir)], capsys, models_dir)
    assert "not a resnet-serving checkpoint" in line


def test_unknown_precision_is_refused(models_dir, capsys, tiny_checkpoints):
    line = _refused([str(tiny_checkpoints["resnet20"]), "--out", str(models_dir), "--precision", "int4"], capsys, models_dir)
    assert "'int4'" in line and "fp32, fp16, int8" in line


def test_old_opset_is_refused(models_dir, capsys, tiny_checkpoints):
    line = _refused([str(tiny_checkpoints["resnet20"]), "--out", str(models_dir), "--opset", "13"], capsys, models_dir)
    assert "opset 13" in line and ">= 18" in line


def test_out_dir_below_a_file_is_refused(capsys, tiny_checkpoints, tmp_path):
    blocker = tmp_path / "models"
    blocker.write_text("a file where the models folder should be")
    line = _refused([str(tiny_checkpoints["resnet20"]), "--out", str(blocker / "inner")], capsys, tmp_path)
    assert "is not a folder" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_out_dir_is_refused(models_dir, capsys, tiny_checkpoints):
    models_dir.chmod(0o555)
    try:
        line = _refused([str(tiny_checkpoints["resnet20"]), "--out", str(models_dir / "sub")], capsys, models_dir)
    finally:
        models_dir.chmod(0o755)
    assert "not writable" in line


def test_weights_of_another_arch_are_refused(models_dir, capsys, tiny_checkpoints, tmp_path):
    payload = checkpoint.load(tiny_checkpoints["resnet20"])
    mislabelled = checkpoint.save({**payload, "arch": "resnet32"}, tmp_path / "mislabelled.pt")
    line = _refused([str(mislabelled), "--out", str(models_dir)], capsys, models_dir)
    assert "do not fit resnet32" in line


def test_non_finite_weights_are_refused_by_name(models_dir, capsys, tiny_checkpoints, tmp_path):
    payload = checkpoint.load(tiny_checkpoints["resnet20"])
    payload["model"]["fc.bias"][3] = float("nan")
    broken = checkpoint.save(payload, tmp_path / "broken.pt")
    line = _refused([str(broken), "--out", str(models_dir)], capsys, models_dir)
    assert "checkpoint weights hold NaN or infinity in fc.bias" in line


def test_failed_verification_writes_nothing_and_keeps_the_served_model(models_dir, capsys, tiny_checkpoints, tmp_path):
    # A negative BatchNorm variance: every weight is finite and the graph exports and passes
    # onnx.checker, but torch's logits are NaN, so parity must refuse it before the served model
    # is touched.
    payload = checkpoint.load(tiny_checkpoints["resnet20"])
    payload["model"]["bn1.running_var"][0] = -1.0
    broken = checkpoint.save(payload, tmp_path / "broken.pt")
    line = _refused([str(broken), "--out", str(models_dir)], capsys, models_dir)
    assert "fp32 parity failed at batch 1" in line


def test_cli_subprocess_exports_and_replaces_atomically(models_dir, tiny_checkpoints):
    result = subprocess.run([str(EXPORT), str(tiny_checkpoints["resnet20"]), "--out", str(models_dir)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    target = models_dir / "resnet20" / "model.onnx"
    assert result.stdout.strip() == str(target)
    assert "checking fp32 parity with torch at batch 1, 2, 7: done" in result.stderr  # progress is shown
    assert target.read_bytes()[:30] != b"the model being served"  # replaced
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]  # and no temp file left


def test_cli_subprocess_refusal_is_one_line_with_exit_2(models_dir, tmp_path):
    result = subprocess.run([str(EXPORT), str(tmp_path / "missing.pt"), "--out", str(models_dir)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("resnet-export: error: ")
    assert result.stdout == ""


def test_missing_calibration_data_is_refused(models_dir, capsys, tiny_checkpoints, tmp_path):
    line = _refused([str(tiny_checkpoints["resnet20"]), "--out", str(models_dir), "--precision", "int8",
                     "--calibration-data", str(tmp_path / "no-such-data")], capsys, models_dir)
    assert "--calibration-data" in line and "no-such-data" in line


def test_without_recorded_images_fp32_checks_parity_on_noise_but_int8_needs_data(models_dir, capsys,
                                                                                tiny_checkpoints, tmp_path):
    # Like a checkpoint imported from torchvision's weights: it names a dataset this machine lacks.
    payload = checkpoint.load(tiny_checkpoints["resnet20"])
    payload["dataset"] = {"kind": "torchvision-weights", "dataset": "ImageNet-1k", "weights": "test"}
    imported = checkpoint.save(payload, tmp_path / "imported.pt")
    line = _refused([str(imported), "--out", str(models_dir), "--precision", "int8"], capsys, models_dir)
    assert "cannot load the val images for verification" in line

    assert main([str(imported), "--out", str(tmp_path / "fp32")]) == 0
    assert "checking fp32 parity on seeded random inputs instead" in capsys.readouterr().err
    assert (tmp_path / "fp32" / "resnet20" / "model.onnx").is_file()
