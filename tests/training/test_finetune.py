"""Fine-tuning (--init-from): the backbone loads, the head is replaced or kept, the two phases' learning
rates, the checkpoint's card and provenance, a served answer naming the new classes, every refusal.

The folders are crops of real photographs that scikit-image bundles (bench.studies.finetune.photo_folder)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
import torchvision

from bench.studies.finetune import photo_folder, stand_in_weights
from training import checkpoint, cli, finetune, models, synthetic
from training.config import TrainConfig
from training.data import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.slow  # trains networks

CLASSES = ("astronaut", "cat", "coffee")
TINY = ["--image-size", "16", "--batch-size", "8", "--workers", "0", "--log-every", "1"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three classes of real-photo crops: 8 train and 4 val images each, 24 px."""
    return photo_folder(tmp_path_factory.mktemp("photos"), train_per_class=8, val_per_class=4, size=24,
                        classes=CLASSES)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A resnet20 trained for a few steps on the synthetic set: the weights fine-tuning starts from."""
    out = tmp_path_factory.mktemp("source")
    argv = ["--arch", "resnet20", *TINY, "--train-size", "48", "--val-size", "16", "--max-steps", "3", "--out", str(out)]
    assert cli.main(argv) == 0
    return out / "checkpoint.pt"


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def fails_cleanly(argv: list[str], capsys, match: str) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resnet-train: error: "), err
    assert match in err, err


def test_head_phase_replaces_the_head_and_leaves_the_backbone_equal_to_the_source(tmp_path, photos, source):
    out = tmp_path / "head"
    # bf16 autocast and channels-last too: the frozen weights must come through them untouched.
    argv = ["--init-from", str(source), "--data", str(photos), *TINY, "--max-steps", "3", "--head-steps", "3",
            "--finetune-bn", "frozen", "--amp", "--channels-last", "--out", str(out)]
    assert cli.main(argv) == 0
    before, after = checkpoint.load(source), checkpoint.load(out / "checkpoint.pt")
    assert after["arch"] == "resnet20"  # the source's arch: --arch was left out
    assert after["class_ids"] == after["class_names"] == list(CLASSES) and after["num_classes"] == 3
    assert after["model"]["fc.weight"].shape == (3, 64) and before["model"]["fc.weight"].shape == (10, 64)
    backbone = [k for k in before["model"] if not k.startswith("fc.")]
    assert backbone and all(torch.equal(before["model"][k], after["model"][k]) for k in backbone)
    assert after["preprocessing"] == before["preprocessing"]  # the source's mean, std and sizes
    started = after["provenance"]["init_from"]
    assert started["kind"] == "checkpoint" and started["head"] == "replaced"
    assert started["sha256"] == checkpoint.sha256(source)
    assert after["config"]["init_from"] == str(source) and after["config"]["finetune_bn"] == "frozen"


def test_after_the_head_phase_the_whole_net_trains_at_the_lower_lr(tmp_path, photos, source):
    out = tmp_path / "phases"
    argv = ["--init-from", str(source), "--data", str(photos), *TINY, "--max-steps", "4", "--head-steps", "2",
            "--lr", "0.1", "--lr-milestones", "100", "--finetune-lr", "0.01", "--finetune-bn", "train", "--out", str(out)]
    assert cli.main(argv) == 0
    # The logged lr is the one the next step uses (after scheduler.step()).
    assert [e["lr"] for e in metrics(out) if e["event"] == "train"] == pytest.approx([0.1, 0.01, 0.01, 0.01])
    before, after = checkpoint.load(source)["model"], checkpoint.load(out / "checkpoint.pt")["model"]
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])  # "train": statistics move
    # --resume continues the fine-tuning run: whole-net phase, same lr, provenance kept.
    assert cli.main(["--resume", str(out / "checkpoint.pt"), "--max-steps", "5"]) == 0
    resumed = checkpoint.load(out / "checkpoint.pt")
    assert resumed["train_state"]["step"] == 5 and resumed["provenance"]["init_from"]["head"] == "replaced"
    assert metrics(out)[-2]["lr"] == pytest.approx(0.01)


def test_phase_defaults_one_head_epoch_half_the_lr_and_bn_frozen_below_16():
    config = TrainConfig(arch="resnet20", init_from="x.pt", lr=0.1, batch_size=8, max_steps=100)
    resolved = finetune.resolve(config, steps_per_epoch=12)
    assert (resolved.head_steps, resolved.finetune_lr, resolved.finetune_bn) == (12, pytest.approx(0.05), "frozen")
    assert finetune.resolve(TrainConfig(init_from="x.pt", lr=0.1, batch_size=16, max_steps=5), 12).head_steps == 5
    assert finetune.resolve(TrainConfig(init_from="x.pt", lr=0.1, batch_size=16, max_steps=5), 12).finetune_bn == "train"
    assert [finetune.lr_factor(s, resolved) for s in (0, 11, 12, 99)] == pytest.approx([1, 1, 0.5, 0.5])
    model = models.build("resnet20", 3)
    finetune.set_phase(model, resolved, 0)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert finetune.set_phase(model, resolved, 12) and all(p.requires_grad for p in model.parameters())


def test_the_loop_asks_the_start_what_fine_tuning_changes(source):
    scratch = finetune.start_for(TrainConfig(arch="resnet20", lr=0.1, max_steps=10), None)
    assert type(scratch) is finetune.FromScratch and not scratch.set_phase(models.build("resnet20", 3), None, 0)
    start = finetune.start_for(TrainConfig(arch="resnet20", init_from=str(source)), None)
    saved = checkpoint.load(source)
    config = start.configure(TrainConfig(arch="resnet20", init_from=str(source)))
    assert config.image_size == saved["preprocessing"]["input_size"]  # the source's input side
    assert start.preprocessing({"kind": "folder", "root": "/x"}, config).to_dict() == saved["preprocessing"]
    model = models.build("resnet20", 3)
    assert start.initialise(model, config, ["a", "b", "c"])["head"] == "replaced"
    resumed = finetune.start_for(config, {"preprocessing": saved["preprocessing"]})
    assert resumed.source is None and resumed.initialise(models.build("resnet20", 3), config, ["a"]) is None
    assert resumed.preprocessing({}, config).to_dict() == saved["preprocessing"]


def test_the_head_is_kept_when_the_classes_are_the_same(source):
    src = finetune.load_source(str(source))
    model = models.build("resnet20", 10)
    assert finetune.apply(model, src, "resnet20", [c[0] for c in synthetic.CLASSES]) == "kept"
    assert all(torch.equal(v, src.state_dict[k]) for k, v in model.state_dict().items())


def test_torchvision_weights_name_loads_from_the_hub_cache_with_its_preprocessing(tmp_path, photos, monkeypatch):
    stand_in = torch.load(stand_in_weights(tmp_path / "torch"), weights_only=True)  # random: a stand-in
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "tv"
    argv = ["--init-from", "resnet18:IMAGENET1K_V1", "--data", str(photos), *TINY, "--max-steps", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["arch"] == "resnet18" and state["class_names"] == list(CLASSES)
    assert state["preprocessing"] == {"input_size": 16, "resize_size": 18, "mean": list(IMAGENET_MEAN),
                                      "std": list(IMAGENET_STD), "interpolation": "bilinear",
                                      "input_dtype": "float32", "layout": "NCHW"}
    assert state["config"]["finetune_bn"] == "frozen"  # auto, at 8 images per step
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    assert state["provenance"]["init_from"] == {"kind": "torchvision", "spec": "resnet18:IMAGENET1K_V1",
                                                "weights": str(weights), "url": weights.url, "head": "replaced"}
    assert all(torch.equal(stand_in[k], state["model"][k]) for k in stand_in if not k.startswith("fc."))


def test_refusals_are_one_line_exit_2_and_write_nothing(tmp_path, photos, source, capsys, make_image_folder):
    out = tmp_path / "out"
    keep = [*TINY, "--max-steps", "1", "--out", str(out)]
    data = ["--data", str(photos)]
    fails_cleanly(["--init-from", str(tmp_path / "nope.pt"), *data, *keep], capsys,
                  "is neither a checkpoint file nor a torchvision weights name")
    fails_cleanly(["--init-from", str(source), "--arch", "resnet32", *data, *keep], capsys,
                  "holds a resnet20, not a resnet32")
    fails_cleanly(["--init-from", "resnet18:IMAGENET9K", *data, *keep], capsys, "has no weights 'IMAGENET9K'")
    # The same name and shapes but another width: a foreign state dict saved as one of ours.
    narrow = checkpoint.load(source)
    narrow["model"] = {**narrow["model"], "conv1.weight": torch.zeros(8, 3, 3, 3)}
    checkpoint.save({k: v for k, v in narrow.items() if k not in ("format", "version")}, tmp_path / "narrow.pt")
    fails_cleanly(["--init-from", str(tmp_path / "narrow.pt"), *data, *keep], capsys, "does not fit a resnet20")
    fails_cleanly(["--init-from", str(source), "--resume", str(source), *keep], capsys, "give only one of them")
    root = make_image_folder(tmp_path / "imgs", ["a", "b"], per_class=1)
    (root / "train" / "c").mkdir()
    fails_cleanly(["--init-from", str(source), "--data", str(root), *keep], capsys, "train/c' is empty")
    (root / "val" / "b" / "0.png").unlink()
    (root / "val" / "b").rmdir()
    (root / "train" / "c").rmdir()
    fails_cleanly(["--init-from", str(source), "--data", str(root), *keep], capsys, "must have the same class folders")
    assert not out.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_fine_tuned_checkpoint_exports_and_serves_the_new_class_names(tmp_path, photos, source):
    from export.exporter import export_checkpoint

    out = tmp_path / "ft"
    assert cli.main(["--init-from", str(source), "--data", str(photos), *TINY, "--max-steps", "6", "--out", str(out)]) == 0
    models_dir = tmp_path / "models"
    export_checkpoint(out / "checkpoint.pt", models_dir, name="photos", progress=False)
    port = _free_port()
    script = Path(sys.executable).with_name("resnet-serve")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESNET_SERVE_")}
    with open(tmp_path / "serve.log", "wb") as log:
        server = subprocess.Popen([*command, "--models", str(models_dir), "--port", str(port),
                                   "--default-model", "photos", "--providers", "cpu"],
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
        photo = (photos / "val" / "cat" / "0.png").read_bytes()
        response = httpx.post(url + "/classify", files={"file": ("cat.png", photo, "image/png")}, timeout=30)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["model"] == "photos"
        assert {p["label"] for p in answer["predictions"]} <= set(CLASSES), answer
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)
