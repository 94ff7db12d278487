"""resnet-train on the command line: bad input is one line and exit 2 with nothing overwritten;
import-torchvision reads torchvision's real weights API from a hub cache."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from training import checkpoint, cli, models
from training.imagenet_wnids import WNIDS

pytestmark = pytest.mark.slow  # trains networks

ARGS = ["--arch", "resnet20", "--image-size", "32", "--batch-size", "16", "--train-size", "64",
        "--val-size", "20", "--max-steps", "2", "--workers", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real resnet20 checkpoint from the CLI, shared by the bad-input tests (read-only)."""
    out = tmp_path_factory.mktemp("trained")
    assert cli.main([*ARGS, "--out", str(out)]) == 0
    return out / "checkpoint.pt"


def fails_cleanly(argv: list[str], capsys, match: str) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resnet-train: error: "), err
    assert match in err, err


def test_bad_input_is_one_line_exit_2_and_overwrites_nothing(tmp_path, trained, capsys, make_image_folder):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"precious")
    keep = ["--out", str(out)]
    fails_cleanly(["--arch", "resnet19", *keep], capsys, "unknown arch 'resnet19'; expected one of")
    fails_cleanly([*ARGS, "--data", str(tmp_path / "missing"), *keep], capsys, "no such folder")
    root = make_image_folder(tmp_path / "imgs", ["a", "b"], per_class=1)
    (root / "train" / "empty").mkdir()
    (root / "val" / "empty").mkdir()
    fails_cleanly([*ARGS, "--data", str(root), *keep], capsys, "train/empty' is empty")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x04 definitely not a checkpoint")
    fails_cleanly(["--resume", str(corrupt), *keep], capsys, "cannot load")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": models.build("resnet20", 10).state_dict()}, foreign)
    fails_cleanly(["--resume", str(foreign), *keep], capsys, "is not a resnet-serving checkpoint")
    fails_cleanly(["--resume", str(trained), "--arch", "resnet18", *keep], capsys, "is a resnet20, not a resnet18")
    fails_cleanly(["--resume", str(trained), "--lr", "0.3", *keep], capsys, "lr 0.3 differs")
    fails_cleanly(["--max-steps", "many", *keep], capsys, "--max-steps must be an integer, got 'many'")
    fails_cleanly([*ARGS, "--lr-schedule", "linear", *keep], capsys, "lr_schedule must be one of")
    assert (out / "checkpoint.pt").read_bytes() == b"precious"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]


def test_a_diverging_run_stops_with_one_line_naming_the_tensors_and_writes_no_checkpoint(tmp_path, capsys):
    out = tmp_path / "diverged"
    assert cli.main([*ARGS, "--max-steps", "3", "--lr", "1e30", "--log-every", "1", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("resnet-train: error: training diverged by step ") and "NaN or infinity in conv1.weight" in err
    assert not (out / "checkpoint.pt").exists()


def test_resume_from_the_cli_continues_into_the_same_folder(tmp_path, trained):
    out = tmp_path / "cont"
    out.mkdir()
    resume = out / "checkpoint.pt"
    resume.write_bytes(trained.read_bytes())
    assert cli.main(["--resume", str(resume), "--max-steps", "4"]) == 0
    state = checkpoint.load(resume)
    assert state["train_state"]["step"] == 4 and state["config"]["max_steps"] == 4


def test_console_script_runs_as_a_real_process(tmp_path):
    script = Path(sys.executable).parent / "resnet-train"
    result = subprocess.run([str(script), "--arch", "plain999", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("resnet-train: error: unknown arch 'plain999'")
    assert result.stderr.count("\n") == 1


def test_import_torchvision_reads_the_hub_cache_through_the_weights_api(tmp_path, monkeypatch):
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(1)
    published = torchvision.models.resnet18().state_dict()  # stands in for the real download
    torch.save(published, cache / Path(weights.url).name)  # the exact file name torchvision expects
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "imported"
    assert cli.main(["import-torchvision", "resnet18", "--weights", "IMAGENET1K_V1", "--out", str(out)]) == 0
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["arch"] == "resnet18" and state["num_classes"] == 1000
    assert state["class_ids"] == list(WNIDS) and state["class_names"][:2] == ["tench", "goldfish"]
    assert state["preprocessing"] == {"input_size": 224, "resize_size": 256, "mean": [0.485, 0.456, 0.406],
                                      "std": [0.229, 0.224, 0.225], "interpolation": "bilinear",
                                      "input_dtype": "float32", "layout": "NCHW"}
    assert state["metrics"]["val_top1"] == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    assert all(torch.equal(published[k], state["model"][k]) for k in published)
    assert "train_state" not in state


def test_import_torchvision_offline_without_cache_names_the_file_to_place(tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "training.cli", "import-torchvision", "resnet152",
                             "--weights", "IMAGENET1K_V2", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert str(tmp_path / "hub" / "checkpoints" / "resnet152-f82ba261.pth") in result.stderr
    assert not out.exists()


def test_import_torchvision_unknown_weights_lists_the_valid_ones(capsys, tmp_path):
    fails_cleanly(["import-torchvision", "resnet50", "--weights", "IMAGENET9K", "--out", str(tmp_path)], capsys,
                  "expected one of ['IMAGENET1K_V1', 'IMAGENET1K_V2']")
    fails_cleanly(["import-torchvision", "resnet20", "--out", str(tmp_path)], capsys, "not 'resnet20'")
