"""Fine-tuning: start a run from trained weights and teach the network your own classes.

    resnet-train --init-from runs/r18/checkpoint.pt --data photos/ --out runs/photos
    resnet-train --init-from resnet18:IMAGENET1K_V1 --data photos/ --out runs/photos-tv

The source is a checkpoint of ours (trained, fine-tuned or imported) or a torchvision weights name
`arch:WEIGHTS`, fetched through the same weights API and hub cache as `resnet-train
import-torchvision` ($TORCH_HOME/hub/checkpoints/). Its backbone loads; its final layer (the head)
is kept when the class ids are the same, in the same order, and replaced by a freshly initialised
one otherwise. The source's preprocessing (mean, std, interpolation, resize ratio) is kept; only
the input side may change (--image-size, default the source's). So is its shortcut option (Table 3,
--shortcut, default the source's): a shortcut-A checkpoint's weights fit only a net built as A.

The recipe for a small dataset, as in fast.ai's `Learner.fine_tune` (one frozen epoch at base_lr,
then `base_lr /= 2` and the whole net) and Keras's transfer-learning guide ("Transfer learning &
fine-tuning": train the new head on a frozen base, then unfreeze at a low lr):
  1. head phase, `head_steps` (default one epoch): only the head trains, at `lr`; the backbone has
     requires_grad off, so its weights stay the source's and a step costs one forward through it.
  2. whole-net phase: every weight trains at `finetune_lr` (default lr / 2, fast.ai's halving),
     following the run's --lr-schedule and --warmup-* as factors of that peak. Which lr suits
     which source, measured: docs/finetuning.md.
BatchNorm (`finetune_bn`): "frozen" keeps every BN layer in inference mode (the source's running
statistics, never updated; its scale and shift still train in phase 2), "train" updates them as
usual. "auto" freezes them below 16 images per process: BN's error grows quickly below that batch
(Wu & He, Group Normalization, arXiv 1803.08494, Fig. 1: 23.7% at 16, 24.8% at 8, 27.3% at 4),
and small-batch fine-tuning practice freezes them (torchvision's detection backbones use
FrozenBatchNorm2d; Keras's guide keeps BN in inference mode when unfreezing).

The training loop (training.train) asks a *start* what varies between a run from random weights
and a fine-tuning run: `FromScratch` and `FineTune` below, chosen by `start_for`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from artifact import Preprocessing
from training import checkpoint, data, hub, models
from training.config import TrainConfig, lr_factor as schedule_factor
from training.imagenet_wnids import WNIDS

FROZEN_BN_BELOW = 16  # images per process; see the module docstring (Wu & He, Fig. 1)


@dataclass(frozen=True)
class Source:
    """Weights to start from, with what they were trained to output and how they see images."""

    arch: str  # builder name in training.models
    class_ids: tuple[str, ...]  # the source's classes in logit order
    state_dict: dict  # the source network's weights
    preprocessing: Preprocessing  # the source's evaluation preprocessing
    record: dict  # where it came from, for the new checkpoint's provenance
    shortcut: str | None = None  # the source's Table 3 option (checkpoint "shortcut"); None: the arch's own


def _is_weights_name(spec: str) -> bool:
    arch, sep, name = spec.partition(":")
    return bool(sep and name) and arch in models.IMAGENET_ARCHS and not Path(spec).exists()


def load_source(spec: str) -> Source:
    """The --init-from SOURCE: a checkpoint path, or torchvision's `arch:WEIGHTS` (e.g. resnet18:IMAGENET1K_V1)."""
    if _is_weights_name(spec):
        arch, _, name = spec.partition(":")
        weights, state_dict = hub.published_weights(arch, name)
        return Source(arch, tuple(WNIDS), state_dict, hub.preprocessing(weights),
                      {"kind": "torchvision", "spec": spec, "weights": str(weights), "url": weights.url})
    if not Path(spec).is_file():
        raise checkpoint.CheckpointError(
            f"--init-from {spec!r} is neither a checkpoint file nor a torchvision weights name "
            f"(expected a checkpoint.pt or arch:WEIGHTS such as resnet18:IMAGENET1K_V1)")
    payload = checkpoint.load(spec)
    return Source(payload["arch"], tuple(payload["class_ids"]), payload["model"],
                  Preprocessing.from_dict(payload["preprocessing"]),
                  {"kind": "checkpoint", "spec": spec, "path": str(Path(spec).resolve()),
                   "sha256": checkpoint.sha256(spec), "val_top1": payload["metrics"].get("val_top1")},
                  payload.get("shortcut"))


def source_build(spec: str) -> tuple[str, str | None]:
    """The arch and shortcut of the --init-from SOURCE: a fine-tuning run's default --arch and --shortcut."""
    if _is_weights_name(spec):
        return spec.partition(":")[0], None
    source = load_source(spec)
    return source.arch, source.shortcut


def head_name(model: nn.Module) -> str:
    """The module name of the network's final layer ("fc" in every arch here)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][-1]


def apply(model: nn.Module, source: Source, arch: str, class_ids: list[str], shortcut: str | None = None) -> str:
    """Load the source into `model` (built as `arch` with `shortcut`); returns "kept" or "replaced" for
    the head. ValueError if it does not fit."""
    if source.arch != arch:
        raise ValueError(f"--init-from {source.record['spec']!r} holds a {source.arch}, not a {arch} "
                         f"(leave out --arch, or pass --arch {source.arch})")
    # Compared as built: a checkpoint from before --shortcut (None) is the arch's own option.
    have, want = source.shortcut or models.own_shortcut(arch), shortcut or models.own_shortcut(arch)
    if have != want:
        raise ValueError(f"--init-from {source.record['spec']!r} holds a {arch} with shortcut {have}, not {want} "
                         f"(leave out --shortcut, or pass --shortcut {have})")
    head = head_name(model)
    keep = tuple(class_ids) == source.class_ids
    head_keys = {f"{head}.weight", f"{head}.bias"}
    state = source.state_dict if keep else {k: v for k, v in source.state_dict.items() if k not in head_keys}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a shape that differs: another width or depth under the same name
        detail = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error))
        raise ValueError(f"--init-from {source.record['spec']!r} does not fit a {arch}: {detail}") from None
    if unexpected or set(missing) != (set() if keep else head_keys):
        raise ValueError(f"--init-from {source.record['spec']!r} does not fit a {arch}: "
                         f"missing {sorted(set(missing) - head_keys)[:3]}, unexpected {sorted(unexpected)[:3]}")
    return "kept" if keep else "replaced"


def preprocessing(source: Source, image_size: int) -> Preprocessing:
    """The source's preprocessing at `image_size` (0: the source's), its resize/crop ratio kept."""
    pre = source.preprocessing
    if not image_size or image_size == pre.input_size:
        return pre
    resize = max(image_size, int(round(image_size * pre.resize_size / pre.input_size)))
    return replace(pre, input_size=image_size, resize_size=resize)


def resolve(config: TrainConfig, steps_per_epoch: int) -> TrainConfig:
    """Fill the fine-tuning defaults of a resolved config: head_steps, finetune_lr, finetune_bn."""
    if not config.init_from:
        return config
    head_steps = steps_per_epoch if config.head_steps < 0 else config.head_steps
    bn = config.finetune_bn
    if bn == "auto":
        bn = "frozen" if config.batch_size < FROZEN_BN_BELOW else "train"
    return replace(config, head_steps=min(head_steps, config.max_steps), finetune_lr=config.finetune_lr or config.lr / 2,
                   finetune_bn=bn)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of config.lr at `step`: the run's schedule, scaled to finetune_lr after the head phase."""
    factor = schedule_factor(step, config)
    if not config.init_from or step < config.head_steps:
        return factor
    return factor * config.finetune_lr / config.lr


def set_phase(model: nn.Module, config: TrainConfig, step: int) -> bool:
    """requires_grad for the phase at `step` (the head alone, then all); True if anything changed.

    A DDP wrapper must be rebuilt when it changes: DDP registers the parameters that require a
    gradient when it is constructed (torch.nn.parallel.DistributedDataParallel docs)."""
    if not config.init_from:
        return False
    everything = step >= config.head_steps
    prefix = head_name(model) + "."
    changed = False
    for name, parameter in model.named_parameters():
        wanted = everything or name.startswith(prefix)
        if parameter.requires_grad != wanted:
            parameter.requires_grad_(wanted)
            changed = True
    return changed


def freeze_batchnorm(model: nn.Module, config: TrainConfig) -> None:
    """Under finetune_bn "frozen", keep every BN layer in eval mode, whatever model.train() says."""
    if not config.init_from or config.finetune_bn != "frozen":
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train = _always_eval(module)
            module.eval()


def _always_eval(module: nn.Module):
    def train(mode: bool = True) -> nn.Module:
        return nn.Module.train(module, False)

    return train


class FromScratch:
    """A run from random weights: every weight trains from step 0 on the run's schedule."""

    def configure(self, config: TrainConfig) -> TrainConfig:
        """The config before the data is read (the input side may come from the weights)."""
        return config

    def resolve(self, config: TrainConfig, steps_per_epoch: int) -> TrainConfig:
        """Fill the start's own defaults of a resolved config."""
        return config

    def preprocessing(self, record: dict, config: TrainConfig) -> Preprocessing:
        """The evaluation preprocessing the checkpoint records."""
        return data.preprocessing_for(record, config.image_size)

    def initialise(self, model: nn.Module, config: TrainConfig, class_ids: list[str]) -> dict | None:
        """Load the starting weights into the freshly built `model`; returns the provenance's init_from."""
        return None

    def lr_factor(self, step: int, config: TrainConfig) -> float:
        """Multiplier of config.lr at `step`."""
        return schedule_factor(step, config)

    def set_phase(self, model: nn.Module, config: TrainConfig, step: int) -> bool:
        """Which weights train at `step`; True if that changed (a DDP wrapper must then be rebuilt)."""
        return False


class FineTune(FromScratch):
    """A run from a source's weights: its head is kept or replaced, the head trains alone first, then
    the whole net at finetune_lr; BN may be frozen. `source` is None when the run is resumed."""

    def __init__(self, source: Source | None, saved_preprocessing: dict | None = None):
        self.source, self.saved_preprocessing = source, saved_preprocessing

    def configure(self, config: TrainConfig) -> TrainConfig:
        if self.source and not config.image_size:
            return replace(config, image_size=self.source.preprocessing.input_size)
        return config

    def resolve(self, config: TrainConfig, steps_per_epoch: int) -> TrainConfig:
        return resolve(config, steps_per_epoch)

    def preprocessing(self, record: dict, config: TrainConfig) -> Preprocessing:
        # the source's; a resumed fine-tuning run keeps its own
        if self.source:
            return preprocessing(self.source, config.image_size)
        return Preprocessing.from_dict(self.saved_preprocessing)

    def initialise(self, model: nn.Module, config: TrainConfig, class_ids: list[str]) -> dict | None:
        started_from = None
        if self.source:
            started_from = {**self.source.record, "head": apply(model, self.source, config.arch, class_ids,
                                                                config.shortcut)}
        freeze_batchnorm(model, config)
        return started_from

    def lr_factor(self, step: int, config: TrainConfig) -> float:
        return lr_factor(step, config)

    def set_phase(self, model: nn.Module, config: TrainConfig, step: int) -> bool:
        return set_phase(model, config, step)


def start_for(config: TrainConfig, saved: dict | None) -> FromScratch:
    """How the run starts: from scratch, or fine-tuning from config.init_from (read now, before
    anything is written, unless the run resumes the checkpoint `saved`)."""
    if not config.init_from:
        return FromScratch()
    if saved:
        return FineTune(None, saved["preprocessing"])
    return FineTune(load_source(config.init_from))
