"""resnet-train: train a ResNet, or import torchvision's published weights, into a checkpoint.

    resnet-train --arch resnet18 --data synthetic --image-size 32 --max-steps 300 --batch-size 64 --out runs/r18
    resnet-train --resume runs/r18/checkpoint.pt --max-steps 600          # continue exactly
    torchrun --nproc_per_node=8 -m training.cli --arch resnet50 --data /data/imagenet --amp --channels-last --out runs/r50
    resnet-train import-torchvision resnet152 --weights IMAGENET1K_V2 --out runs/resnet152-tv
    resnet-train paper --scale small --out results/paper      # the paper's experiments (training.paper)
    resnet-train --init-from resnet18:IMAGENET1K_V1 --data photos/ --out runs/photos  # fine-tune (docs/finetuning.md)

Bad input (unknown arch, missing or empty data folder, unreadable or foreign --resume file, a
checkpoint of another arch) is one line on stderr and exit status 2, before anything is written.
"""

from __future__ import annotations

import shlex
import sys
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import cliconfig
from artifact import ArtifactError
from training import checkpoint, finetune, hub, train
from training.checkpoint import CheckpointError
from training.config import TrainConfig, resume_config
from training.data import DataError


def train_parser() -> cliconfig.Parser:
    """One flag per TrainConfig field (its comment is the help), plus --resume."""
    parser = cliconfig.Parser(TrainConfig, prog="resnet-train", description="Train a ResNet (He et al. 2015) into a "
                              "checkpoint. A field left out takes the recipe's value (training/config.py).")
    parser.add_argument("--resume", dest="resume", help="checkpoint.pt to continue exactly")
    return parser


@dataclass(frozen=True)
class ImportConfig:
    """resnet-train import-torchvision: torchvision's published ImageNet weights -> a checkpoint."""

    arch: str  # resnet18, resnet34, resnet50, resnet101 or resnet152
    out: str  # folder for checkpoint.pt
    weights: str = "DEFAULT"  # torchvision weights enum name, e.g. IMAGENET1K_V2


def _import_parser() -> cliconfig.Parser:
    return cliconfig.Parser(ImportConfig, prog="resnet-train import-torchvision", positional=("arch",),
                            description="Write a checkpoint from torchvision's published ImageNet weights.")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the resnet-train console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "resnet-train " + shlex.join(argv)
    try:
        if argv[:1] == ["paper"]:
            from training.paper import experiments  # matplotlib and scikit-learn: only this sub-command needs them
            return experiments.main(argv[1:])
        if argv[:1] == ["import-torchvision"]:
            args = ImportConfig(**_import_parser().parse(argv[1:]))
            path = hub.import_torchvision(args.arch, args.weights, args.out, command=command)
        else:
            given = train_parser().parse(argv)
            resume = given.pop("resume", None)
            if resume and "init_from" in given:
                raise ValueError("--init-from starts a new run and --resume continues one: give only one of them")
            if "init_from" in given:  # the source's arch and shortcut unless the flags say otherwise (then checked)
                arch, shortcut = finetune.source_build(given["init_from"])
                if given.setdefault("arch", arch) == arch:
                    given.setdefault("shortcut", shortcut)
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
        return cliconfig.fail("resnet-train", error)
    except FloatingPointError as error:  # the run diverged: not bad input, but still one line
        print(f"resnet-train: error: {error}", file=sys.stderr)
        return 1
    except SystemExit as stop:  # argparse's --help
        return int(stop.code or 0)
    except KeyboardInterrupt:
        print("resnet-train: interrupted", file=sys.stderr)
        return 130
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
