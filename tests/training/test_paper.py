"""resnet-train paper: the digits set, the runner (probes, resume), the report's files, and the
paper-scale recipe (CIFAR-10 cannot be downloaded here: its recipe is checked and started on the digits)."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from training.paper import digits, experiments, probes
from training.paper import runs as paper_runs  # `runs` names the plan's runs below

pytestmark = pytest.mark.slow  # trains networks


def test_digits_are_real_upscaled_images_in_a_fixed_stratified_split():
    train, train_labels = digits.load("train", 16)
    test, test_labels = digits.load("test", 16)
    assert train.shape == (1438, 3, 16, 16) and test.shape == (359, 3, 16, 16) and train.dtype == torch.uint8
    assert torch.equal(train[:, 0], train[:, 2])  # grey in three channels
    assert sorted(set(test_labels.tolist())) == list(range(10)) and abs(int((test_labels == 3).sum()) - 36) <= 1
    assert torch.equal(digits.load("test", 16)[0], test)  # the split does not move between calls
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        digits.load("val")


def test_paper_scale_is_the_recipe_of_section_4_2():
    scale = experiments.paper_scale()
    assert (scale.data, scale.size, scale.max_steps, scale.batch, scale.lr) == ("cifar10", 32, 64000, 128, 0.1)
    assert scale.lr_milestones == (32000, 48000) and scale.seeds == (0, 1, 2)
    runs = {r.name: r for r in experiments.plan(scale)}
    r20, r110 = runs["degradation-resnet20-s0"], runs["degradation-resnet110-s0"]
    assert (r20.momentum, r20.weight_decay, r20.warmup_steps, r110.warmup_steps) == (0.9, 1e-4, 0, 400)
    assert r110.save_every > 0  # a 64k-step run is resumable
    assert {"degradation-plain56-s2", "deep-resnet1202-s0", "deep-plain1202-s0", "shortcut-resnet34C-s2"} <= set(runs)


def test_paper_recipe_starts_on_the_digits_with_the_same_code_path(tmp_path):
    first = experiments.plan(experiments.paper_scale())[0]  # plain20 at batch 128, lr 0.1
    run = replace(first, data="digits", size=8, max_steps=2, eval_every=2)
    record = paper_runs.train(run, paper_runs.load_sets("digits", 8), tmp_path)
    saved = json.loads((tmp_path / "runs" / f"{first.name}.json").read_text())
    assert saved["run"]["batch"] == 128 and saved["train"][-1]["lr"] == 0.1 and saved["train"][-1]["step"] == 2
    assert record["params"] == 269_722 and 0 <= saved["test"][-1]["err"] <= 100


def test_paper_scale_without_cifar10_is_one_line_and_exit_2(tmp_path):
    # A proxy on a closed port makes the download fail fast and the same way on any machine.
    env = {**os.environ, "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "training.cli", "paper", "--scale", "paper", "--out", str(out),
                             "--cifar-root", str(tmp_path / "cifar"), "--device", "cpu"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "CIFAR-10 is not in" in result.stderr
    assert not out.exists()  # nothing written


def tiny_scale() -> experiments.Scale:
    """Every experiment of the small scale at tiny depths, 8 px and two steps."""
    return experiments.Scale("tiny", "digits", "digits", 8, 2, 16, 0.01, (1,), 1, (0, 1),
                       ("plain8", "plain14", "resnet8", "resnet14"), ("plain20",), ("resnet20", "plain20"),
                       2, 8, "resnet18", 2, 0)


def test_report_is_written_with_every_section_and_plot_and_a_rerun_trains_nothing(tmp_path):
    torch.set_num_threads(1)
    report = experiments.run_all(tiny_scale(), tmp_path, "cpu", command="test")
    text = report.read_text()
    for heading in ("## 1. Degradation", "## 2. Gradient flow", "### The first steps of 1202-layer nets"[:24],
                    "## 3. Response magnitudes", "## 4. Shortcut options", "## Runs"):
        assert heading in text
    assert "| plain14 | " in text and "(n=2)" in text and "Verdict:" in text and "| C | " in text
    for png in ("degradation.png", "gradients.png", "deep.png", "responses.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = sorted((tmp_path / "runs").glob("*.json"))
    assert len(results) == len(experiments.plan(tiny_scale())) == 17
    stamps = [p.stat().st_mtime_ns for p in results]
    experiments.run_all(tiny_scale(), tmp_path, "cpu", command="test")
    assert [p.stat().st_mtime_ns for p in results] == stamps  # finished runs are not run again


def test_an_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    sets = paper_runs.load_sets("digits", 8)
    run = paper_runs.Run(name="r8", arch="resnet8", data="digits", size=8, seed=3, max_steps=4, batch=16,
                         lr=0.05, lr_milestones=(3,), eval_every=2, probe_at=(0, 3), save_every=2)
    paper_runs.train(run, sets, tmp_path / "whole")

    real, calls = probes.gradient_norms, []

    def interrupt_at_step_3(*args):
        calls.append(1)
        if len(calls) == 2:  # the probe before step 3: the state of step 2 is on disk
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(probes, "gradient_norms", interrupt_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        paper_runs.train(run, sets, tmp_path / "cut")
    assert (tmp_path / "cut" / "runs" / "r8.state.pt").exists() and not (tmp_path / "cut" / "runs" / "r8.json").exists()
    monkeypatch.setattr(probes, "gradient_norms", real)
    paper_runs.train(run, sets, tmp_path / "cut")
    resumed, whole = (json.loads((tmp_path / f / "runs" / "r8.json").read_text()) for f in ("cut", "whole"))
    assert resumed["train"] == whole["train"] and resumed["test"] == whole["test"] and resumed["grads"] == whole["grads"]
    assert not (tmp_path / "cut" / "runs" / "r8.state.pt").exists()
