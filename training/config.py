"""The training config and the paper's recipes (He et al., arXiv 1512.03385, sec. 3.4 and 4.2).

`TrainConfig` holds what the user asked for; a 0 or empty field means "the recipe's value".
`resolve` fills those in once the data is known, and the resolved config is what a checkpoint
stores, so `--resume` continues with exactly the same schedule.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from training import models
from artifact import depth_of


# The paper's choices first; the others are torchvision's reference-script options (--lr-scheduler
# cosineannealinglr, --lr-warmup-method linear), which converge faster on short runs.
WARMUP_METHODS = ("constant", "linear")
# Fine-tuning (training.finetune): BN statistics "frozen", "train"ed, or "auto" (frozen below 16 images per process).
FINETUNE_BN = ("auto", "frozen", "train")
LR_SCHEDULES = ("step", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "resnet18"  # a name in training.models.ARCHS
    shortcut: str | None = None  # Table 3's option A, B or C for the ImageNet ResNets (CIFAR nets: A only); none: the arch's own
    data: str = "synthetic"  # "synthetic", "cifar10", or a folder with train/<class>/ and val/<class>/;
    # "synthetic-placed": the synthetic classes, each object in at most a quarter of the image, anywhere
    out: str = "runs/train"  # folder for checkpoint.pt and metrics.jsonl
    image_size: int = 0  # network input side in pixels; 0: the arch's native size (224 ImageNet, 32 CIFAR)
    epochs: int = 0  # passes over the train split; 0: the recipe's (90 ImageNet; CIFAR runs 64k steps)
    max_steps: int = 0  # optimizer steps to stop after (total, counted across resumes); 0: from epochs
    batch_size: int = 0  # images per step *per process*; 0: the recipe's (256 ImageNet, 128 CIFAR)
    lr: float = 0.0  # peak learning rate; 0: 0.1 x global batch / 256 (CIFAR nets: / 128)
    momentum: float = 0.9  # SGD momentum (sec. 3.4)
    weight_decay: float = 1e-4  # L2 penalty on every weight (sec. 3.4)
    lr_milestones: tuple[int, ...] = ()  # steps at which lr is divided by 10; (): recipe fractions of the run
    warmup_steps: int = -1  # warm-up steps before the peak (sec. 4.2, 110+ layers); -1: recipe (400 or 0)
    warmup_method: str = "constant"  # "constant": lr/10 throughout (sec. 4.2); "linear": lr/10 ramping to the peak
    lr_schedule: str = "step"  # "step": /10 at each milestone (sec. 3.4); "cosine": half-cosine to 0 after warm-up
    zero_init_residual: bool = False  # start each residual branch at zero (Goyal et al. sec. 5.1)
    seed: int = 0  # seeds init, data order, augmentation and the synthetic images
    workers: int = 2  # DataLoader worker processes per training process (0: load in the main process)
    amp: bool = False  # autocast: bf16 on CPU, amp_dtype on CUDA
    amp_dtype: str = "fp16"  # "fp16" (with a GradScaler) or "bf16"; CUDA only, the CPU always uses bf16
    channels_last: bool = False  # NHWC memory format (faster convs on tensor cores and oneDNN)
    train_size: int = 20000  # synthetic data only: images in the train split
    val_size: int = 1000  # synthetic data only: images in the val split
    cifar_root: str = ""  # cifar10 only: download/cache folder; "": ~/.cache/cifar10
    save_every: int = 0  # also checkpoint every this many steps; 0: at each epoch end and at the end
    log_every: int = 50  # steps between train lines in metrics.jsonl and the progress bar's refresh
    init_from: str = ""  # fine-tune from a checkpoint.pt or torchvision "arch:WEIGHTS"; "": random init
    head_steps: int = -1  # fine-tune: first steps that train only the head; -1: one epoch
    finetune_lr: float = 0.0  # fine-tune: peak lr after the head phase; 0: lr / 2
    finetune_bn: str = "auto"  # fine-tune: BN statistics "frozen", "train"ed, "auto": frozen below 16 images/process

    def __post_init__(self) -> None:
        models.check_arch(self.arch)
        models.check_shortcut(self.arch, self.shortcut)
        for name in ("image_size", "epochs", "max_steps", "batch_size", "workers", "train_size", "val_size", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        if self.warmup_method not in WARMUP_METHODS:
            raise ValueError(f"warmup_method must be one of {WARMUP_METHODS}, got {self.warmup_method!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.head_steps < -1 or self.finetune_lr < 0:
            raise ValueError(f"head_steps must be >= -1 and finetune_lr >= 0, got {self.head_steps} and {self.finetune_lr}")
        if self.finetune_bn not in FINETUNE_BN:
            raise ValueError(f"finetune_bn must be one of {FINETUNE_BN}, got {self.finetune_bn!r}")
        if self.amp_dtype not in ("fp16", "bf16"):
            raise ValueError(f"amp_dtype must be 'fp16' or 'bf16', got {self.amp_dtype!r}")
        object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones))

    def to_dict(self) -> dict:
        """Plain values for the checkpoint's "config" entry."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Inverse of to_dict; unknown keys are an error (a checkpoint from another tool)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}")
        return cls(**values)


# Step decay points as fractions of the run: ImageNet /10 at epochs 30 and 60 of 90 (sec. 3.4,
# torchvision's reference recipe); CIFAR /10 at 32k and 48k of 64k iterations (sec. 4.2).
IMAGENET_DECAYS = (1 / 3, 2 / 3)
CIFAR_DECAYS = (1 / 2, 3 / 4)


def resolve(config: TrainConfig, train_len: int, world_size: int) -> TrainConfig:
    """Fill every recipe default (0 / -1 / ()) with a concrete value; max_steps becomes the run length."""
    cifar = models.is_cifar(config.arch)
    image_size = config.image_size or models.native_input_size(config.arch)
    batch = config.batch_size or (128 if cifar else 256) // world_size or 1
    if train_len < batch * world_size:
        raise ValueError(
            f"the train split has {train_len} images, fewer than one step of {batch} x {world_size} processes"
        )
    steps_per_epoch = train_len // (batch * world_size)
    if config.max_steps:
        total = config.max_steps if not config.epochs else min(config.max_steps, config.epochs * steps_per_epoch)
    elif config.epochs:
        total = config.epochs * steps_per_epoch
    else:
        total = 64000 if cifar else 90 * steps_per_epoch
    # The paper's peak lr 0.1 is for batch 256 on ImageNet (sec. 3.4) and batch 128 on CIFAR
    # (sec. 4.2); other batches scale it linearly (Goyal et al., arXiv 1706.02677).
    lr = config.lr or 0.1 * batch * world_size / (128 if cifar else 256)
    milestones = config.lr_milestones or tuple(
        int(round(f * total)) for f in (CIFAR_DECAYS if cifar else IMAGENET_DECAYS)
    )
    # sec. 4.2: ResNet-110 starts at lr 0.01 "until the training error is below 80% (about 400
    # iterations)"; we use the fixed 400 iterations.
    warmup = config.warmup_steps if config.warmup_steps >= 0 else (400 if cifar and depth_of(config.arch) >= 110 else 0)
    return replace(config, image_size=image_size, batch_size=batch, max_steps=total, lr=lr,
                   lr_milestones=milestones, warmup_steps=min(warmup, total))


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak lr at `step` (0-based) for a resolved config."""
    if step < config.warmup_steps:
        return 0.1 if config.warmup_method == "constant" else 0.1 + 0.9 * step / config.warmup_steps
    if config.lr_schedule == "cosine":
        done = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
    return 0.1 ** sum(step >= m for m in config.lr_milestones)


# What may change when a run is continued: its length and where/how often it writes.
RESUMABLE_CHANGES = ("max_steps", "epochs", "workers", "out", "save_every", "log_every")


def resume_config(saved: dict, changes: dict) -> TrainConfig:
    """The checkpoint's config with `changes` (field -> value) applied; other changes are refused."""
    config = TrainConfig.from_dict(saved)
    for name, value in changes.items():
        if name == "arch" and value != config.arch:
            raise ValueError(f"the --resume checkpoint is a {config.arch}, not a {value}")
        if name not in RESUMABLE_CHANGES and getattr(config, name) != value:
            raise ValueError(
                f"--resume continues the checkpoint's run: {name} {value!r} differs from its {getattr(config, name)!r} "
                f"(only {', '.join(RESUMABLE_CHANGES)} may change)"
            )
    updates = {k: v for k, v in changes.items() if k in RESUMABLE_CHANGES}
    if "epochs" in updates and "max_steps" not in updates:
        updates["max_steps"] = 0  # recomputed from the new epoch count by train.run
    return replace(config, **updates)
