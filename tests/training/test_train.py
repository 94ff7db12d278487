"""The training loop: checkpoints that describe themselves, exact resume, the recipes, DDP via torchrun."""

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from artifact import Preprocessing
from training import checkpoint, models, train
from training.config import TrainConfig, lr_factor, resolve, resume_config

pytestmark = pytest.mark.slow  # trains networks

REPO = Path(__file__).resolve().parents[2]


def metrics(out: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_a_run_writes_a_self_describing_weights_only_checkpoint_and_metrics(tiny):
    path = train.run(replace(tiny, save_every=3))
    raw = torch.load(path, weights_only=True)  # no pickled objects anywhere in the file
    state = checkpoint.validate(raw)
    assert state["arch"] == "resnet20" and state["num_classes"] == 10
    assert state["class_ids"][0] == "disc" and len(state["class_names"]) == 10
    pre = Preprocessing.from_dict(state["preprocessing"])
    assert (pre.input_size, pre.resize_size) == (32, 37)
    assert state["dataset"] == {"kind": "synthetic", "seed": 0, "train_size": 96, "val_size": 40, "image_size": 37}
    assert state["config"]["max_steps"] == 8 and state["config"]["lr"] == pytest.approx(0.1 * 16 / 128)
    assert state["metrics"]["step"] == 8 and 0 <= state["metrics"]["val_top1"] <= state["metrics"]["val_top5"] <= 100
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model"])
    assert state["train_state"]["step"] == 8 and "optimizer" in state["train_state"]
    models.build("resnet20", 10).load_state_dict(state["model"])
    events = metrics(tiny.out)
    assert [e["event"] for e in events].count("val") == 2  # 6 steps per epoch: after epoch 1 and at step 8
    val = [e for e in events if e["event"] == "val"][-1]
    assert val["val_top1_err"] == pytest.approx(100 - val["val_top1"]) and val["val_images"] == 40
    train_lines = [e for e in events if e["event"] == "train"]
    assert [e["step"] for e in train_lines] == [2, 4, 6, 8] and all(e["img_per_s"] > 0 for e in train_lines)
    assert not list(Path(tiny.out).glob("*.tmp"))


def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit(tiny, tmp_path):
    # The interruption at step 4 falls mid-epoch (6 steps per epoch); both runs share one schedule.
    config = replace(tiny, lr_milestones=(6,))
    straight = checkpoint.load(train.run(replace(config, out=str(tmp_path / "straight"))))
    first = train.run(replace(config, max_steps=4, out=str(tmp_path / "split")))
    saved = checkpoint.load(first)
    assert saved["train_state"]["step"] == 4
    resumed = checkpoint.load(train.run(resume_config(saved["config"], {"max_steps": 8}), resume=first))
    assert resumed["train_state"]["step"] == 8
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    a, b = straight["train_state"]["optimizer"]["state"], resumed["train_state"]["optimizer"]["state"]
    assert all(torch.equal(a[i]["momentum_buffer"], b[i]["momentum_buffer"]) for i in a)
    assert straight["metrics"]["val_top1"] == resumed["metrics"]["val_top1"]


def test_amp_bf16_and_channels_last_train_on_the_cpu(tiny):
    state = checkpoint.load(train.run(replace(tiny, max_steps=2, amp=True, channels_last=True)))
    assert state["config"]["amp"] and state["config"]["channels_last"]
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert all(v.dtype in (torch.float32, torch.int64) for v in state["model"].values())


def test_amp_on_the_cpu_leaves_padding_only_taps_without_gradient(tiny):
    # At 16 px resnet18's layer4.0.conv1 (3x3, stride 2) sees a 1x1 input, so only its centre tap
    # touches data and the other eight must get exactly zero gradient: with weight decay alone,
    # SGD then scales all of them by one common factor. oneDNN's bf16 weight gradient puts garbage
    # or NaN there, which the trainer avoids by running that convolution in float32.
    config = replace(tiny, arch="resnet18", image_size=16, batch_size=16, max_steps=4, amp=True, channels_last=True)
    torch.manual_seed(config.seed)
    before = models.build("resnet18", 10).state_dict()["layer4.0.conv1.weight"]
    after = checkpoint.load(train.run(config))["model"]["layer4.0.conv1.weight"]
    edge = torch.ones(3, 3, dtype=torch.bool)
    edge[1, 1] = False
    ratio = after[:, :, edge] / before[:, :, edge]
    assert torch.isfinite(after).all()
    assert torch.allclose(ratio, ratio.flatten()[0], rtol=1e-4) and 0.99 < ratio.flatten()[0] <= 1
    assert not torch.allclose(after[:, :, 1, 1], before[:, :, 1, 1] * ratio.flatten()[0])  # the centre learned


def test_recipes_follow_the_paper():
    cifar = resolve(TrainConfig(arch="resnet110"), train_len=50000, world_size=1)
    assert (cifar.batch_size, cifar.max_steps, cifar.lr_milestones, cifar.warmup_steps) == (128, 64000, (32000, 48000), 400)
    assert cifar.lr == pytest.approx(0.1) and cifar.image_size == 32
    assert resolve(TrainConfig(arch="resnet56"), 50000, 1).warmup_steps == 0
    imagenet = resolve(TrainConfig(arch="resnet50"), train_len=1_281_167, world_size=8)
    steps_per_epoch = 1_281_167 // 256
    assert (imagenet.batch_size, imagenet.image_size, imagenet.lr) == (32, 224, pytest.approx(0.1))
    assert imagenet.max_steps == 90 * steps_per_epoch
    assert imagenet.lr_milestones == (30 * steps_per_epoch, 60 * steps_per_epoch)
    assert resolve(TrainConfig(batch_size=64), 10000, 2).lr == pytest.approx(0.05)  # linear scaling


def test_lr_factor_warms_up_then_steps_down_tenfold():
    config = resolve(TrainConfig(arch="resnet110", max_steps=100, lr_milestones=(50, 75), warmup_steps=10), 1000, 1)
    assert [lr_factor(s, config) for s in (0, 9, 10, 49)] == [0.1, 0.1, 1.0, 1.0]
    assert lr_factor(50, config) == pytest.approx(0.1) and lr_factor(99, config) == pytest.approx(0.01)


def test_lr_factor_linear_warmup_then_cosine_to_zero():
    config = resolve(TrainConfig(max_steps=110, warmup_steps=10, warmup_method="linear", lr_schedule="cosine"), 1000, 1)
    assert [lr_factor(s, config) for s in (0, 5)] == [pytest.approx(0.1), pytest.approx(0.55)]
    assert lr_factor(10, config) == pytest.approx(1.0)  # the peak right after the warm-up
    assert lr_factor(60, config) == pytest.approx(0.5)  # half way through the decay
    assert lr_factor(109, config) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert lr_factor(110, config) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("field, value", [("warmup_method", "cosine"), ("lr_schedule", "linear")])
def test_unknown_schedule_names_are_refused_naming_the_choices(field, value):
    with pytest.raises(ValueError, match=f"{field} must be one of .* got '{value}'"):
        TrainConfig(**{field: value})


def test_resume_refuses_changes_other_than_length_and_outputs():
    saved = resolve(TrainConfig(arch="resnet20"), 1000, 1).to_dict()
    assert resume_config(saved, {"max_steps": 10, "out": "x"}).max_steps == 10
    with pytest.raises(ValueError, match="is a resnet20, not a resnet18"):
        resume_config(saved, {"arch": "resnet18"})
    with pytest.raises(ValueError, match="lr 0.5 differs"):
        resume_config(saved, {"lr": 0.5})


def test_two_process_torchrun_on_the_cpu_trains_once_and_writes_once(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "training.cli", "--arch", "resnet20",
         "--image-size", "32", "--batch-size", "8", "--train-size", "64", "--val-size", "30",
         "--max-steps", "6", "--workers", "0", "--log-every", "2", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["provenance"]["world_size"] == 2 and state["train_state"]["step"] == 6
    assert state["config"]["lr"] == pytest.approx(0.1 * 16 / 128)  # scaled by the global batch
    events = metrics(out)
    assert [e["event"] for e in events].count("start") == 1  # rank 0 alone writes
    vals = [e for e in events if e["event"] == "val"]
    # 64 images / (8 x 2) = 4 steps per epoch: val after epoch 1 and at step 6, each over all 30
    # images once (every rank evaluates its own shard; the counts are summed).
    assert [v["step"] for v in vals] == [4, 6] and all(v["val_images"] == 30 for v in vals)
    assert [e["step"] for e in events if e["event"] == "train"] == [2, 4, 6]
