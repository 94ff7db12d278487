"""The training loop: one CPU, one GPU, or many processes under torchrun (DDP), same code.

    from training.config import TrainConfig
    from training import train
    checkpoint = train.run(TrainConfig(arch="resnet20", max_steps=100, batch_size=32, out="runs/r20"))

It reads top to bottom like torchvision's references/classification/train.py: setup (data, model,
optimiser, schedule), `train_one_epoch`, `evaluate`, checkpointing (`_save`, `_restore`), then `run`.
What differs when a run starts from trained weights is training.finetune's `FineTune`.

Exact resume: the data order and each image's augmentation are functions of the seed, the epoch and
the index (training.distributed), and the checkpoint carries optimizer, scheduler, scaler and RNG
states, so a run restarted from a mid-epoch checkpoint sees the same batches as one that never stopped.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from artifact import Preprocessing
from training import checkpoint, data, finetune, models, progress
from training.distributed import KeyedDataset, KeyedSampler, World
from training.config import TrainConfig, resolve


# --- setup: data, model, optimiser and schedule -------------------------------------------------


@dataclass(frozen=True)
class _Setup:
    """What a run is, fixed once the data is read: `train_one_epoch`, `evaluate` and `_save` read it."""

    config: TrainConfig  # resolved: every recipe default filled in
    world: World
    start: finetune.FromScratch  # from scratch or fine-tuning (training.finetune)
    record: dict  # the dataset record (training.data) the checkpoint stores
    pre: Preprocessing  # the evaluation preprocessing the checkpoint stores
    class_ids: list[str]
    class_names: list[str]
    out: Path
    command: str  # the command line the checkpoint's provenance records
    memory_format: torch.memory_format
    amp_dtype: torch.dtype

    def autocast(self):
        return torch.autocast(self.world.device.type, dtype=self.amp_dtype, enabled=self.config.amp)


@dataclass
class _Training:
    """What the steps change: `train_one_epoch` advances it, `_save` writes it, `_restore` reads it back."""

    model: torch.nn.Module
    net: torch.nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    started_from: dict | None  # the provenance's init_from: the weights the run started from
    step: int = 0  # optimizer steps taken, counted across resumes
    last_eval: dict = field(default_factory=dict)  # the checkpoint's metrics: the latest evaluation


def _data(config: TrainConfig, saved: dict | None) -> tuple[dict, Dataset, Dataset]:
    """The dataset record (a resumed run's own) and its train and val splits."""
    record = saved["dataset"] if saved else data.record_for(
        config.data, seed=config.seed, train_size=config.train_size, val_size=config.val_size,
        input_size=config.image_size or models.native_input_size(config.arch), cifar_root=config.cifar_root or None)
    return record, data.build_dataset(record, "train"), data.build_dataset(record, "val")


def _resolve(config: TrainConfig, start: finetune.FromScratch, saved: dict | None, resume, train_len: int,
             world: World) -> TrainConfig:
    """A new run fills in the recipe; a resumed one keeps its checkpoint's, which must fit the flags."""
    if not saved:
        config = resolve(config, train_len, world.world)
        return start.resolve(config, train_len // (config.batch_size * world.world))
    if saved["arch"] != config.arch:
        raise checkpoint.CheckpointError(f"{str(resume)!r} holds a {saved['arch']} checkpoint, not {config.arch}")
    if saved.get("shortcut") != config.shortcut:  # its weights fit only the net it was built as
        raise checkpoint.CheckpointError(f"{str(resume)!r} holds shortcut {saved.get('shortcut') or 'none'}, "
                                         f"not {config.shortcut or 'none'}")
    if not config.max_steps:  # resuming with a new --epochs: the run's length in steps
        config = replace(config, max_steps=config.epochs * (train_len // (config.batch_size * world.world)))
    return config


def _build(setup: _Setup) -> _Training:
    """Model (with the start's weights), SGD, the lr schedule and the loss scaler."""
    config, device = setup.config, setup.world.device
    torch.manual_seed(config.seed)
    model = models.build(config.arch, len(setup.class_ids), config.zero_init_residual, config.shortcut)
    started_from = setup.start.initialise(model, config, setup.class_ids)
    model = model.to(device, memory_format=setup.memory_format)
    if config.amp and device.type != "cuda":  # see models.strided_convs_on_one_pixel: those run in fp32
        for name in models.strided_convs_on_one_pixel(config.arch, config.image_size):
            _run_in_fp32(model.get_submodule(name))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: setup.start.lr_factor(step, config))
    fp16 = config.amp and device.type == "cuda" and setup.amp_dtype == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    return _Training(model, model, optimizer, scheduler, scaler, started_from)


def _run_in_fp32(module: torch.nn.Module) -> None:
    """Run `module` outside autocast, in float32; its parameters and state-dict keys stay as they are."""
    plain = type(module).forward

    def forward(x):
        with torch.autocast(x.device.type, enabled=False):
            return plain(module, x.float())

    module.forward = forward


def _loaders(setup: _Setup, train_set, val_set) -> tuple[DataLoader, KeyedSampler, DataLoader]:
    """The train loader over this process's shard, in the (seed, epoch) order, and the val loader."""
    config, world = setup.config, setup.world
    sampler = KeyedSampler(DistributedSampler(train_set, world.world, world.rank, shuffle=True,
                                              seed=config.seed, drop_last=True), config.seed)
    args = {"num_workers": config.workers, "pin_memory": world.device.type == "cuda",
            "persistent_workers": config.workers > 0}
    train_loader = DataLoader(KeyedDataset(train_set, data.train_transform(setup.record, setup.pre)),
                              config.batch_size, sampler=sampler, drop_last=True, **args)
    val_shard = torch.utils.data.Subset(KeyedDataset(val_set, data.eval_transform(setup.pre)),
                                        [(i, 0) for i in range(world.rank, len(val_set), world.world)])
    return train_loader, sampler, DataLoader(val_shard, max(config.batch_size, 64), **args)


def _wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    return DistributedDataParallel(model) if world.enabled else model


# --- training and evaluation ---------------------------------------------------------------------


def train_one_epoch(setup: _Setup, training: _Training, loader: DataLoader, epoch: int, steps_per_epoch: int,
                    skip: int) -> None:
    """Steps of epoch `epoch` from step `skip` of it until the epoch or the run ends; logs every log_every."""
    config, world, device = setup.config, setup.world, setup.world.device
    bar = progress.bar(f"epoch {epoch + 1}", steps_per_epoch, enabled=world.main, unit="step")
    bar.update(skip)  # a resumed epoch starts where it stopped
    window = [0.0, 0.0, 0, time.monotonic()]  # loss sum, hits, images, start
    for images, labels in loader:
        if setup.start.set_phase(training.model, config, training.step):
            training.net = _wrap(training.model, world)  # DDP registers the trainable weights when built
        images = images.to(device, non_blocking=True, memory_format=setup.memory_format)
        labels = labels.to(device, non_blocking=True)
        with setup.autocast():
            logits = training.net(images)
            loss = F.cross_entropy(logits.float(), labels)
        training.optimizer.zero_grad(set_to_none=True)
        training.scaler.scale(loss).backward()
        training.scaler.step(training.optimizer)
        training.scaler.update()
        training.scheduler.step()
        training.step += 1
        step = training.step
        window[0] += loss.item() * len(labels)
        window[1] += (logits.argmax(1) == labels).sum().item()
        window[2] += len(labels)
        done = step - epoch * steps_per_epoch
        if step % config.log_every == 0 or done == steps_per_epoch or step == config.max_steps:
            seconds = time.monotonic() - window[3]
            stats = {"loss": window[0] / window[2], "acc": 100 * window[1] / window[2],
                     "img_per_s": window[2] * world.world / seconds, "lr": training.optimizer.param_groups[0]["lr"]}
            _check_finite(training)  # a bad weight can hide behind a finite loss: stop early, name it
            bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items()}, refresh=False)
            bar.update(done - bar.n)
            if world.main:
                _log(setup.out, {"event": "train", "epoch": epoch + 1, "step": step, **stats})
            window = [0.0, 0.0, 0, time.monotonic()]
        if config.save_every and step % config.save_every == 0 and world.main:
            _save(setup, training, {**training.last_eval, "step": step}, steps_per_epoch)
        if step >= config.max_steps:
            break
    bar.close()


def evaluate(model, loader, device, autocast, channels_last, world: World, num_classes: int) -> dict:
    """Loss, top-1 and top-5 accuracy and error (%) over the val split, summed across processes."""
    model.eval()
    k = min(5, num_classes)
    sums = [0.0, 0.0, 0.0, 0.0]  # loss, top-1 hits, top-k hits, images
    with torch.no_grad(), autocast():
        for images, labels in loader:
            images = images.to(device, non_blocking=True, memory_format=channels_last)
            labels = labels.to(device, non_blocking=True)
            logits = model(images).float()
            hits = logits.topk(k, dim=1).indices.eq(labels[:, None])
            sums = [sums[0] + F.cross_entropy(logits, labels, reduction="sum").item(),
                    sums[1] + hits[:, 0].sum().item(), sums[2] + hits.any(dim=1).sum().item(), sums[3] + len(labels)]
    loss, top1, top5, n = world.sum(sums)
    model.train()
    return {"val_loss": loss / n, "val_top1": 100 * top1 / n, "val_top5": 100 * top5 / n,
            "val_top1_err": 100 - 100 * top1 / n, "val_top5_err": 100 - 100 * top5 / n, "val_images": int(n)}


# --- checkpointing -------------------------------------------------------------------------------


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": list(np.random.get_state())}
    state["numpy"][1] = torch.from_numpy(state["numpy"][1].astype(np.int64))  # weights_only: tensors, not arrays
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, keys, *rest = state["python"]
    random.setstate((version, tuple(keys), *rest))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_finite(training: _Training) -> None:
    bad = checkpoint.non_finite(training.model.state_dict())
    if bad:
        raise FloatingPointError(f"training diverged by step {training.step}: NaN or infinity in {', '.join(bad[:3])}"
                                 f"{' ...' if len(bad) > 3 else ''}; stopped before writing them to a checkpoint")


def _save(setup: _Setup, training: _Training, metrics: dict, steps_per_epoch: int) -> Path:
    """<out>/checkpoint.pt: the weights with what describes them, and every state `_restore` needs."""
    _check_finite(training)
    config, step = setup.config, training.step
    return checkpoint.Checkpoint(
        arch=config.arch, shortcut=config.shortcut, class_ids=setup.class_ids, class_names=setup.class_names,
        preprocessing=setup.pre, dataset=setup.record, config=config.to_dict(), metrics=checkpoint.Metrics(**metrics),
        model=training.model.state_dict(),
        train_state={"optimizer": training.optimizer.state_dict(), "scheduler": training.scheduler.state_dict(),
                     "scaler": training.scaler.state_dict(), "rng": _rng_state(), "step": step,
                     "epoch": step // steps_per_epoch},
        provenance=checkpoint.Provenance.here(setup.command or " ".join(sys.argv), world_size=setup.world.world,
                                              device=setup.world.device.type, init_from=training.started_from),
    ).save(setup.out / "checkpoint.pt")


def _restore(training: _Training, saved: dict) -> None:
    """Continue the checkpoint `saved` exactly: weights, optimizer, schedule, scaler, RNGs and step."""
    training.model.load_state_dict(saved["model"])
    state = saved["train_state"]
    training.optimizer.load_state_dict(state["optimizer"])
    training.scheduler.load_state_dict(state["scheduler"])
    training.scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])
    training.step, training.last_eval = state["step"], saved["metrics"]
    training.started_from = saved.get("provenance", {}).get("init_from")


def _log(out: Path, record: dict) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


# --- the run -------------------------------------------------------------------------------------


def run(config: TrainConfig, resume: str | os.PathLike | None = None, command: str = "") -> Path:
    """Train (or continue the checkpoint `resume`) and return the path of the final checkpoint."""
    world = World()
    try:
        return _train(config, resume, command, world)
    finally:
        world.close()


def _train(config: TrainConfig, resume, command: str, world: World) -> Path:
    """Setup, then epochs of `train_one_epoch` and `evaluate`, each ending in a checkpoint."""
    saved = checkpoint.load(resume) if resume else None
    start = finetune.start_for(config, saved)  # reads a fine-tuning source before anything is written
    config = start.configure(config)
    record, train_set, val_set = _data(config, saved)
    config = _resolve(config, start, saved, resume, len(train_set), world)
    cuda = world.device.type == "cuda"
    setup = _Setup(config, world, start, record, start.preprocessing(record, config), train_set.class_ids,
                   train_set.class_names, Path(config.out), command,
                   torch.channels_last if config.channels_last else torch.contiguous_format,
                   torch.bfloat16 if not cuda or config.amp_dtype == "bf16" else torch.float16)

    training = _build(setup)
    if saved:
        _restore(training, saved)
    start.set_phase(training.model, config, training.step)
    training.net = _wrap(training.model, world)
    train_loader, sampler, val_loader = _loaders(setup, train_set, val_set)
    steps_per_epoch = len(sampler.sampler) // config.batch_size

    if world.main:
        setup.out.mkdir(parents=True, exist_ok=True)
        if not saved:
            (setup.out / "metrics.jsonl").unlink(missing_ok=True)
        _log(setup.out, {"event": "start", "step": training.step, "arch": config.arch, "shortcut": config.shortcut,
                         "world_size": world.world, "device": world.device.type,
                         "resumed_from": str(resume) if resume else None, "config": config.to_dict()})
    training.net.train()
    while training.step < config.max_steps:
        epoch, skip = divmod(training.step, steps_per_epoch)
        sampler.start(epoch, skip * config.batch_size)
        train_one_epoch(setup, training, train_loader, epoch, steps_per_epoch, skip)
        metrics = evaluate(training.model, val_loader, world.device, setup.autocast, setup.memory_format, world,
                           len(setup.class_ids))
        step = training.step
        training.last_eval = {"epoch": epoch + 1, "step": step, "val_top1": metrics["val_top1"],
                              "val_top5": metrics["val_top5"]}
        if world.main:
            print(f"epoch {epoch + 1} step {step}: val top-1 err {metrics['val_top1_err']:.2f}% "
                  f"top-5 err {metrics['val_top5_err']:.2f}% ({metrics['val_images']} images)", file=sys.stderr)
            _log(setup.out, {"event": "val", "epoch": epoch + 1, "step": step, **metrics})
            _save(setup, training, training.last_eval, steps_per_epoch)
    if world.enabled:
        dist.barrier()  # no rank returns before rank 0 has written the checkpoint
    return setup.out / "checkpoint.pt"
