"""resnet-train: train a ResNet, or import torchvision's published weights, into a checkpoint.

    resnet-train --arch resnet18 --data synthetic --image-size 32 --max-steps 300 --batch-size 64 --out runs/r18
    resnet-train --resume runs/r18/checkpoint.pt --max-steps 600          # continue exactly
    torchrun --nproc_per_node=8 -m training.cli --arch resnet50 --data /data/imagenet --amp --channels-last --out runs/r50
    resnet-train import-torchvision resnet152 --weights IMAGENET1K_V2 --out runs/resnet152-tv
    resnet-train --init-from resnet18:IMAGENET1K_V1 --data photos/ --out runs/photos  # fine-tune (docs/finetuning.md)

Bad input (unknown arch, missing or empty data folder, unreadable or foreign --resume file, a
checkpoint of another arch) is one line on stderr and exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import urllib.error

from pathlib import Path

from artifact import ArtifactError
from training import checkpoint, finetune, hub, train
from training.checkpoint import CheckpointError
from training.config import TrainConfig, resume_config
from training.data import DataError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse would print the usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


# flag -> (TrainConfig field, type, help). The one place where flags map onto the config.
FLAGS = {
    "--arch": ("arch", str, "network: resnet18/34/50/101/152, plain18/34, resnet20/32/44/56/110/1202, plain20/.../110"),
    "--data": ("data", str, "'synthetic' (default), 'cifar10', or an ImageNet-style folder with train/ and val/"),
    "--out": ("out", str, "folder for checkpoint.pt and metrics.jsonl"),
    "--image-size": ("image_size", int, "input side in pixels (default: 224 ImageNet nets, 32 CIFAR nets)"),
    "--epochs": ("epochs", int, "passes over the train split (default: 90 ImageNet; CIFAR nets run 64k steps)"),
    "--max-steps": ("max_steps", int, "stop after this many optimizer steps in total"),
    "--batch-size": ("batch_size", int, "images per step per process (default 256 ImageNet / 128 CIFAR, split over processes)"),
    "--lr": ("lr", float, "peak learning rate (default 0.1 x global batch / 256; CIFAR nets / 128)"),
    "--momentum": ("momentum", float, "SGD momentum (default 0.9)"),
    "--weight-decay": ("weight_decay", float, "weight decay (default 1e-4)"),
    "--lr-milestones": ("lr_milestones", _int_list, "comma-separated steps where lr drops 10x (default: recipe)"),
    "--warmup-steps": ("warmup_steps", int, "warm-up steps before the peak lr (default: 400 for CIFAR nets of 110+ layers, else 0)"),
    "--warmup-method": ("warmup_method", str, "constant (default: lr/10 throughout) or linear (lr/10 ramping to the peak)"),
    "--lr-schedule": ("lr_schedule", str, "step (default: /10 at each milestone) or cosine (half-cosine to 0, no milestones)"),
    "--seed": ("seed", int, "random seed (default 0)"),
    "--workers": ("workers", int, "data loading processes per training process (default 2)"),
    "--amp-dtype": ("amp_dtype", str, "CUDA autocast type: fp16 (default) or bf16; the CPU uses bf16"),
    "--train-size": ("train_size", int, "synthetic train images (default 20000)"),
    "--val-size": ("val_size", int, "synthetic val images (default 1000)"),
    "--cifar-root": ("cifar_root", str, "CIFAR-10 download/cache folder (default ~/.cache/cifar10)"),
    "--save-every": ("save_every", int, "also checkpoint every N steps (default: each epoch and the end)"),
    "--log-every": ("log_every", int, "steps between progress/metrics lines (default 50)"),
    "--init-from": ("init_from", str, "fine-tune: start from a checkpoint.pt or torchvision arch:WEIGHTS (e.g. resnet18:IMAGENET1K_V1)"),
    "--head-steps": ("head_steps", int, "fine-tune: steps training only the new head first (default: one epoch)"),
    "--finetune-lr": ("finetune_lr", float, "fine-tune: peak lr once the whole net trains (default: --lr / 2)"),
    "--finetune-bn": ("finetune_bn", str, "fine-tune: BN statistics frozen, train, or auto (default: frozen below batch 16)"),
}
SWITCHES = {
    "--amp": ("amp", "mixed precision: bf16 autocast on CPU, --amp-dtype on CUDA"),
    "--channels-last": ("channels_last", "NHWC memory format"),
    "--zero-init-residual": ("zero_init_residual", "zero the last BN of each residual branch"),
}


def _train_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="resnet-train", description="Train a ResNet (He et al. 2015) into a checkpoint.",
                     argument_default=argparse.SUPPRESS)
    for flag, (field, kind, help_text) in FLAGS.items():
        parser.add_argument(flag, dest=field, type=kind, help=help_text)
    for flag, (field, help_text) in SWITCHES.items():
        parser.add_argument(flag, dest=field, action="store_true", help=help_text)
    parser.add_argument("--resume", dest="resume", help="checkpoint.pt to continue exactly")
    return parser


def _import_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="resnet-train import-torchvision",
                     description="Write a checkpoint from torchvision's published ImageNet weights.")
    parser.add_argument("arch", help="resnet18, resnet34, resnet50, resnet101 or resnet152")
    parser.add_argument("--weights", default="DEFAULT", help="weights enum name, e.g. IMAGENET1K_V2 (default: DEFAULT)")
    parser.add_argument("--out", required=True, help="folder for checkpoint.pt")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the resnet-train console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "resnet-train " + shlex.join(argv)
    try:
        if argv[:1] == ["import-torchvision"]:
            args = _import_parser().parse_args(argv[1:])
            path = hub.import_torchvision(args.arch, args.weights, args.out, command=command)
        else:
            given = vars(_train_parser().parse_args(argv))
            resume = given.pop("resume", None)
            if resume and "init_from" in given:
                raise ValueError("--init-from starts a new run and --resume continues one: give only one of them")
            if "init_from" in given:  # the source's arch unless --arch says otherwise (then checked)
                given.setdefault("arch", finetune.source_arch(given["init_from"]))
            if resume:
                saved = checkpoint.load(resume)
                if "train_state" not in saved:
                    raise CheckpointError(f"{resume!r} has no training state (imported weights?) and cannot be resumed")
                given.setdefault("out", str(Path(resume).parent))
                config = resume_config(saved["config"], given)
            else:
                config = TrainConfig(**given)
            path = train.run(config, resume=resume, command=command)
    except (ValueError, CheckpointError, DataError, ArtifactError, hub.WeightsError, urllib.error.URLError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"resnet-train: error: {message}", file=sys.stderr)
        return 2
    except FloatingPointError as error:  # the run diverged: not bad input, but still one line
        print(f"resnet-train: error: {error}", file=sys.stderr)
        return 1
    except SystemExit as stop:  # argparse: --help (0) or a bad flag (2, its line already printed)
        return int(stop.code or 0)
    except KeyboardInterrupt:
        print("resnet-train: interrupted", file=sys.stderr)
        return 130
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
