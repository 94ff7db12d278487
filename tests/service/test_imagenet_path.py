"""The published-weights path end to end: `make serve-imagenet` imports torchvision's
resnet18 and resnet152 from the torch hub cache, exports them, and serves them as one ladder,
uncalibrated without IMAGENET_VAL and calibrated on it with it; `resnet-calibrate` measures the
imported models on an ImageNet-style `val/<wnid>/*.JPEG` folder with the command a user runs.

Nothing is downloaded: stand-in weights (torchvision's own architectures, randomly initialised)
sit in a temporary TORCH_HOME under the exact file names torchvision expects (the import path does
not check hashes), and https_proxy points at a closed port, as in the offline import test
(tests/training/test_cli.py). The val folder holds crops of the real photos (bench/photos.py).
With random weights every accuracy is meaningless: these tests check structure, never accuracy.

Cost: importing and exporting resnet152 at 224 px (its fp32 parity gate included) dominates; the
first `make serve-imagenet` took 165-185 s on a busy 2-core box (docs/cascade.md), so the module
pays it once: later steps reuse the models, as make does for a user.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from .conftest import encode, free_port, photo, variants

REPO = Path(__file__).resolve().parents[2]
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
# Three ImageNet classes, one photo's crops each (PHOTOS order); which class a photo is filed under
# is arbitrary: the stand-in weights answer nothing right.
VAL_CLASSES = ("n03785016", "n03791053", "n03792782")  # moped, motor scooter, mountain bike
CROPS_PER_CLASS = 4
# resnet-serve's own settings, through the environment as a user may give them: one warm-up run at
# batch 1 and 2 instead of two at 1 and 8 (resnet152's warm-up: 10-12 s -> about 2 s on a busy box)
CHEAP_WARM_UP = {"RESNET_SERVE_WARMUP_RUNS": "1", "RESNET_SERVE_MAX_BATCH_SIZE": "2"}
READY_TIMEOUT_S = 900  # the first run imports and exports resnet152 before the server starts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("make") is None, reason="runs the Makefile's serve-imagenet target"),
]


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """A temporary torch hub cache with stand-in weights and an ImageNet-style val folder of real photos."""
    import torch
    import torchvision

    root = tmp_path_factory.mktemp("imagenet")
    cache = root / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    # the weights the Makefile's IMAGENET_WEIGHTS names: resnet18 V1 and resnet152 V2
    for arch, weights in (("resnet18", torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
                          ("resnet152", torchvision.models.ResNet152_Weights.IMAGENET1K_V2)):  # fmt: skip
        torch.manual_seed(0)
        torch.save(getattr(torchvision.models, arch)().state_dict(), cache / Path(weights.url).name)
    val = root / "data" / "val"
    for i, jpeg in enumerate(variants(len(VAL_CLASSES) * CROPS_PER_CLASS)):
        folder = val / VAL_CLASSES[i % len(VAL_CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(jpeg)
    yield {"torch_home": root / "torch", "data": root / "data", "models": root / "models",
           "checkpoints": root / "checkpoints", "logs": root}  # fmt: skip
    for big in ("torch", "checkpoints", "models"):  # ~290 MB each; pytest keeps its last three runs
        shutil.rmtree(root / big, ignore_errors=True)


def environment(imagenet) -> dict[str, str]:
    """This process's environment, offline, with the temporary cache; no settings of an outer make or server."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RESNET_SERVE_") and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # fmt: skip
    return {**env, **OFFLINE, **CHEAP_WARM_UP, "TORCH_HOME": str(imagenet["torch_home"]), "PYTHONUNBUFFERED": "1"}


class MakeServer:
    """`make serve-imagenet` as a user runs it, in its own process group (make does not pass a
    SIGTERM on to resnet-serve, its child)."""

    def __init__(self, imagenet, val: Path | None) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = imagenet["logs"] / f"make-{port}.log"
        variables = ["HOST=127.0.0.1", f"PORT={port}", f"IMAGENET_MODELS={imagenet['models']}",
                     f"IMAGENET_CHECKPOINTS={imagenet['checkpoints']}", f"IMAGENET_VAL={val or ''}",
                     # the scripts of the interpreter running the tests; its install is not redone here
                     f"BIN={Path(sys.executable).parent}"]  # fmt: skip
        # -j2: resnet18's import and export run beside resnet152's, which dominates (its export)
        command = ["make", "-C", str(REPO), "-j2", "-o", ".venv/.installed", "serve-imagenet", *variables]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env=environment(imagenet), start_new_session=True)  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"make serve-imagenet exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"make serve-imagenet not ready within {READY_TIMEOUT_S} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@contextmanager
def serving(imagenet, val: Path | None):
    """A ready `make serve-imagenet`, stopped (with its server) on leaving."""
    server = MakeServer(imagenet, val)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def uncalibrated(imagenet):
    """`make serve-imagenet` without IMAGENET_VAL: imports, exports, serves (the module's models)."""
    with serving(imagenet, None) as server:
        yield server


@pytest.fixture(scope="module")
def calibrated(imagenet, uncalibrated):
    """`make serve-imagenet IMAGENET_VAL=...` after the first run: calibrates on the val folder, serves."""
    with serving(imagenet, imagenet["data"]) as server:
        yield server


def classify_photo(server) -> dict:
    jpeg = encode(photo("motorcycle_right.png").convert("RGB"), quality=90)
    response = httpx.post(server.url + "/classify", params={"model": "auto", "top_k": 5}, content=jpeg,
                          headers={"Content-Type": "image/jpeg"}, timeout=120)  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def check_imagenet_answer(body: dict) -> None:
    """Five of ImageNet's thousand classes, from a rung of the ladder, that says how it got there."""
    from training.imagenet_wnids import WNIDS

    assert body["model"] in ("resnet18", "resnet152")
    assert len(body["predictions"]) == 5 and all(p["class_id"] == WNIDS[p["class_index"]] for p in body["predictions"])
    probabilities = [p["probability"] for p in body["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert body["cascade"]["path"][0] == "resnet18" and body["cascade"]["path"][-1] == body["model"]


def check_ladder(models: dict) -> None:
    assert [(r["name"], r["depth"]) for r in models["ladder"]] == [("resnet18", 18), ("resnet152", 152)]
    assert models["default_model"] == "resnet18"
    for info in models["models"]:
        assert info["num_classes"] == 1000 and info["input_size"] == 224
    assert {m["name"]: m["resize_size"] for m in models["models"]} == {"resnet18": 256, "resnet152": 232}


def test_make_serve_imagenet_without_val_serves_the_uncalibrated_ladder(uncalibrated, imagenet):
    models = httpx.get(uncalibrated.url + "/models").json()
    check_ladder(models)
    assert models["auto"] == {"signal": "max_softmax", "calibrated": False, "calibration": None}
    assert [r["threshold"] for r in models["ladder"]] == [0.5, None]
    body = classify_photo(uncalibrated)
    check_imagenet_answer(body)
    assert body["cascade"]["calibrated"] is False
    assert "model=auto uncalibrated" in uncalibrated.log()
    assert not (imagenet["models"] / "cascade.json").exists()
    # the imported checkpoints stay beside the exported models (the Makefile's .SECONDARY)
    assert sorted(p.parent.name for p in imagenet["checkpoints"].glob("*/checkpoint.pt")) == ["resnet152", "resnet18"]


def test_make_serve_imagenet_with_val_calibrates_with_resnet_calibrate_on_the_val_folder(calibrated, imagenet):
    models = imagenet["models"]
    log = calibrated.log()
    # make's recipe runs the user's command as a subprocess, on the models the first run built
    assert f"resnet-calibrate --models {models} --data {imagenet['data']}\n" in log
    assert "import-torchvision" not in log and "resnet-export" not in log
    assert "| auto (" in log and f"wrote {models / 'cascade.json'}, {models / 'cascade.png'} and " in log
    data = json.loads((models / "cascade.json").read_text())
    images = len(VAL_CLASSES) * CROPS_PER_CLASS
    assert data["ladder"] == ["resnet18", "resnet152"] and len(data["thresholds"]) == 1
    assert data["data"] == {"source": str(imagenet["data"]), "images": images,
                            "calibration": images // 2, "held_out": images - images // 2}  # fmt: skip
    for name, depth, gflops in (("resnet18", 18, 1.81), ("resnet152", 152, 11.5)):
        recorded = data["models"][name]
        assert recorded["sha256"] == hashlib.sha256((models / name / "model.onnx").read_bytes()).hexdigest()
        assert recorded["depth"] == depth and recorded["precision"] == "fp32"
        assert recorded["gflops"] == pytest.approx(gflops, rel=0.01)  # torchvision's published figures
    assert set(data["curves"]) == {"max_softmax", "margin", "entropy"} and data["signal"] in data["curves"]
    for curve in data["curves"].values():
        for half in ("calibration", "held_out"):
            points = curve[half]
            assert {p["escalation_rate"] for p in points} >= {0.0, 1.0}  # from never to always escalate
            assert all(set(p) == {"threshold", "escalation_rate", "share_per_rung", "top1", "top5", "gflops"}
                       for p in points)  # fmt: skip
    assert set(data["singles"]["held_out"]) == {"resnet18", "resnet152"} and set(data["chosen"]) == {
        "calibration", "held_out"}
    assert (models / "cascade.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_make_serve_imagenet_with_val_serves_the_calibrated_ladder(calibrated, imagenet):
    cascade = imagenet["models"] / "cascade.json"
    data = json.loads(cascade.read_text())
    models = httpx.get(calibrated.url + "/models").json()
    check_ladder(models)
    assert models["auto"] == {"signal": data["signal"], "calibrated": True, "calibration": str(cascade)}
    assert [r["threshold"] for r in models["ladder"]] == [data["thresholds"][0], None]
    assert [r["gflops"] for r in models["ladder"]] == [data["models"]["resnet18"]["gflops"],
                                                       data["models"]["resnet152"]["gflops"]]  # fmt: skip
    body = classify_photo(calibrated)
    check_imagenet_answer(body)
    assert "calibrated" not in body["cascade"]  # calibrated is the default, left out
