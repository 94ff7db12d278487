"""The multi-node training launchers: the Slurm batch script and the indexed Job's command. Each runs
for real under bash, with the cluster's commands (srun, scontrol, torchrun) replaced by recorders on
PATH, and what they would launch is checked against torchrun's and resnet-train's own flags."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from torch.distributed.run import get_args_parser

from training import cli as train_cli
from training.config import TrainConfig

pytestmark = pytest.mark.slow  # runs real torchrun processes

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "deploy" / "slurm" / "train.sbatch"
RECORDER = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
"""
SCONTROL = "#!/bin/sh\nprintf 'gpu-node-07\\ngpu-node-08\\n'\n"


def fake_commands(folder: Path, names: dict[str, str]) -> Path:
    folder.mkdir()
    for name, text in names.items():
        (folder / name).write_text(text)
        (folder / name).chmod(stat.S_IRWXU)
    return folder


def recorded(path: Path) -> list[list[str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def split_launch(argv: list[str]) -> tuple[list[str], list[str]]:
    """torchrun's own arguments, and resnet-train's (after --no-python PROGRAM)."""
    at = argv.index("--no-python")
    assert Path(argv[at + 1]).name == "resnet-train", argv
    return argv[:at + 1], argv[at + 2:]


def train_config(argv: list[str]) -> TrainConfig:
    """The TrainConfig resnet-train would build from argv, through its own parser (cliconfig)."""
    given = train_cli.train_parser().parse(argv)
    given.pop("resume", None)
    return TrainConfig(**given)


def run_sbatch(tmp_path: Path, out: Path) -> list[list[str]]:
    bin_dir = fake_commands(tmp_path / "bin", {"srun": RECORDER, "scontrol": SCONTROL})
    record = tmp_path / "record.jsonl"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record), "OUT": str(out),
        "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
        "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "4242", "SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_PER_TASK": "64",
    }
    result = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return recorded(record)


def test_sbatch_script_passes_shellcheck(tool):
    result = subprocess.run([tool("shellcheck"), str(SBATCH)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_sbatch_launches_one_torchrun_per_node_with_rendezvous_on_the_first(tmp_path):
    (srun,) = run_sbatch(tmp_path, tmp_path / "runs")
    assert srun[0] == "srun" and srun[1] == "--kill-on-bad-exit=1"
    launcher, train_argv = split_launch(srun[2:])
    assert Path(launcher[0]).name == "torchrun"
    args = get_args_parser().parse_args(launcher[1:] + ["resnet-train"])
    assert (args.nnodes, args.nproc_per_node) == ("2", "8")
    assert (args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id) == ("c10d", "gpu-node-07:29500", "4242")
    config = train_config(train_argv)
    assert (config.arch, config.epochs, config.batch_size, config.workers) == ("resnet50", 90, 32, 8)
    assert config.amp and config.channels_last
    assert "--resume" not in train_argv  # nothing to resume yet


def test_sbatch_resumes_from_the_checkpoint_a_requeued_job_left(tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")  # only its existence matters to the script
    (srun,) = run_sbatch(tmp_path, out)
    _, train_argv = split_launch(srun[2:])
    assert train_argv[-2:] == ["--resume", str(out / "checkpoint.pt")]


@pytest.fixture(scope="module")
def job(rendered, of_kind):
    (job,) = of_kind(rendered["k8s/training"], "Job")
    return job


def test_job_command_passes_shellcheck(tool, job, tmp_path):
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["bash", "-c"]
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n" + container["args"][0])
    result = subprocess.run([tool("shellcheck"), str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_job_pods_find_rank_zero_through_the_headless_service(rendered, of_kind, job):
    (service,) = of_kind(rendered["k8s/training"], "Service")
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == int(env["NNODES"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == int(env["GPUS_PER_NODE"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    # indexed Job pods are named <job>-<index>: rank 0's DNS name under the Service
    assert env["MASTER_ADDR"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"


@pytest.mark.parametrize("index", [0, 3])
def test_job_command_launches_torchrun_with_its_node_rank_and_the_sbatch_recipe(job, tmp_path, index):
    (container,) = job["spec"]["template"]["spec"]["containers"]
    bin_dir = fake_commands(tmp_path / "bin", {"torchrun": RECORDER})
    record = tmp_path / "record.jsonl"
    env = {e["name"]: e["value"] for e in container["env"]}
    env |= {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record), "JOB_COMPLETION_INDEX": str(index)}
    result = subprocess.run(["bash", "-c", container["args"][0]], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    (torchrun,) = recorded(record)
    launcher, train_argv = split_launch(torchrun)
    args = get_args_parser().parse_args(launcher[1:] + ["resnet-train"])
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("4", "8", index)
    assert (args.master_addr, args.master_port) == (env["MASTER_ADDR"], 29500)
    config = train_config(train_argv)
    (tmp_path / "slurm").mkdir()
    (srun,) = run_sbatch(tmp_path / "slurm", tmp_path / "runs")
    slurm_config = train_config(split_launch(srun[2:])[1])
    # the same recipe on both launchers; only where it writes differs
    assert {**vars(config), "out": ""} == {**vars(slurm_config), "out": ""}
    assert config.data == "/data/imagenet"
