"""The training loop: one CPU, one GPU, or many processes under torchrun (DDP), same code.

    from training.config import TrainConfig
    from training import train
    checkpoint = train.run(TrainConfig(arch="resnet20", max_steps=100, batch_size=32, out="runs/r20"))

Exact resume: the data order is a function of (seed, epoch) (DistributedSampler) and each image's
augmentation a function of (seed, epoch, index) (`_Keyed`), never of worker count or of a global
RNG stream, so a run restarted from a mid-epoch checkpoint sees the same batches as one that never
stopped; the checkpoint also carries optimizer, scheduler, scaler and RNG states.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from artifact import Preprocessing
from training import checkpoint, data, finetune, models, progress
from training.config import TrainConfig, resolve


class _Keyed(Dataset):
    """Wraps a dataset of PIL images: item (index, seed) is transformed under torch.manual_seed(seed)."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        image, label = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


class _KeyedSampler(Sampler):
    """DistributedSampler's order for one epoch from position `skip` on, each index with its seed."""

    def __init__(self, sampler: DistributedSampler, seed: int):
        self.sampler, self.seed, self.epoch, self.skip = sampler, seed, 0, 0

    def start(self, epoch: int, skip: int) -> None:
        self.sampler.set_epoch(epoch)
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        for index in list(self.sampler)[self.skip :]:
            yield index, (self.seed * 1_000_003 + self.epoch) * 100_000_007 + index

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


class _Dist:
    """nanoGPT's recipe: RANK in the environment means torchrun started us; rank 0 alone writes."""

    def __init__(self):
        self.enabled = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank = int(os.environ.get("RANK", 0)) if self.enabled else 0
        self.world = int(os.environ.get("WORLD_SIZE", 1)) if self.enabled else 1
        local = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.enabled:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.main = self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor.tolist()

    def close(self) -> None:
        if self.enabled:
            dist.destroy_process_group()


def _run_in_fp32(module: torch.nn.Module) -> None:
    """Run `module` outside autocast, in float32; its parameters and state-dict keys stay as they are."""
    plain = type(module).forward

    def forward(x):
        with torch.autocast(x.device.type, enabled=False):
            return plain(module, x.float())

    module.forward = forward


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


def _log(out: Path, record: dict) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _evaluate(model, loader, device, autocast, channels_last, world: _Dist, num_classes: int) -> dict:
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


def run(config: TrainConfig, resume: str | os.PathLike | None = None, command: str = "") -> Path:
    """Train (or continue the checkpoint `resume`) and return the path of the final checkpoint."""
    world = _Dist()
    try:
        return _run(config, resume, command, world)
    finally:
        world.close()


def _run(config: TrainConfig, resume, command: str, world: _Dist) -> Path:
    state = checkpoint.load(resume) if resume else None
    # Fine-tuning (training.finetune): the source is read before anything is written.
    source = finetune.load_source(config.init_from) if config.init_from and not state else None
    if source and not config.image_size:
        config = replace(config, image_size=source.preprocessing.input_size)
    record = state["dataset"] if state else data.record_for(
        config.data, seed=config.seed, train_size=config.train_size, val_size=config.val_size,
        input_size=config.image_size or models.native_input_size(config.arch), cifar_root=config.cifar_root or None)
    train_set = data.build_dataset(record, "train")
    val_set = data.build_dataset(record, "val")
    if not state:
        config = resolve(config, len(train_set), world.world)
        config = finetune.resolve(config, len(train_set) // (config.batch_size * world.world))
    elif state["arch"] != config.arch:
        raise checkpoint.CheckpointError(f"{str(resume)!r} holds a {state['arch']} checkpoint, not {config.arch}")
    elif state.get("shortcut") != config.shortcut:  # its weights fit only the net it was built as
        raise checkpoint.CheckpointError(f"{str(resume)!r} holds shortcut {state.get('shortcut') or 'none'}, "
                                         f"not {config.shortcut or 'none'}")
    elif not config.max_steps:  # resuming with a new --epochs: the run's length in steps
        config = replace(config, max_steps=config.epochs * (len(train_set) // (config.batch_size * world.world)))
    pre = data.preprocessing_for(record, config.image_size)
    if config.init_from:  # the source's preprocessing; a resumed fine-tuning run keeps its own
        pre = finetune.preprocessing(source, config.image_size) if source else Preprocessing.from_dict(state["preprocessing"])
    out = Path(config.out)
    device, cuda = world.device, world.device.type == "cuda"

    torch.manual_seed(config.seed)
    model = models.build(config.arch, len(train_set.class_ids), config.zero_init_residual, config.shortcut)
    started_from = state.get("provenance", {}).get("init_from") if state else None
    if source:
        started_from = {**source.record, "head": finetune.apply(model, source, config.arch, train_set.class_ids,
                                                                  config.shortcut)}
    finetune.freeze_batchnorm(model, config)
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    if config.amp and not cuda:  # see models.strided_convs_on_one_pixel: those run in fp32
        for name in models.strided_convs_on_one_pixel(config.arch, config.image_size):
            _run_in_fp32(model.get_submodule(name))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: finetune.lr_factor(step, config))
    amp_dtype = torch.bfloat16 if not cuda or config.amp_dtype == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and cuda and amp_dtype == torch.float16)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=config.amp)

    step, best = 0, {}
    if state:
        model.load_state_dict(state["model"])
        train_state = state["train_state"]
        optimizer.load_state_dict(train_state["optimizer"])
        scheduler.load_state_dict(train_state["scheduler"])
        scaler.load_state_dict(train_state["scaler"])
        _set_rng_state(train_state["rng"])
        step, best = train_state["step"], state["metrics"]
    finetune.set_phase(model, config, step)
    net = DistributedDataParallel(model) if world.enabled else model

    sampler = _KeyedSampler(DistributedSampler(train_set, world.world, world.rank, shuffle=True,
                                               seed=config.seed, drop_last=True), config.seed)
    loader_args = {"num_workers": config.workers, "pin_memory": cuda, "persistent_workers": config.workers > 0}
    train_loader = DataLoader(_Keyed(train_set, data.train_transform(record, pre)), config.batch_size,
                              sampler=sampler, drop_last=True, **loader_args)
    val_shard = torch.utils.data.Subset(_Keyed(val_set, data.eval_transform(pre)),
                                        [(i, 0) for i in range(world.rank, len(val_set), world.world)])
    val_loader = DataLoader(val_shard, max(config.batch_size, 64), **loader_args)
    steps_per_epoch = len(sampler.sampler) // config.batch_size

    def check_finite() -> None:
        bad = checkpoint.non_finite(model.state_dict())
        if bad:
            raise FloatingPointError(f"training diverged by step {step}: NaN or infinity in {', '.join(bad[:3])}"
                                     f"{' ...' if len(bad) > 3 else ''}; stopped before writing them to a checkpoint")

    def save(metrics: dict) -> Path:
        check_finite()
        return checkpoint.Checkpoint(
            arch=config.arch, shortcut=config.shortcut, class_ids=train_set.class_ids, class_names=train_set.class_names, preprocessing=pre,
            dataset=record, config=config.to_dict(), metrics=checkpoint.Metrics(**metrics), model=model.state_dict(),
            train_state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict(), "rng": _rng_state(), "step": step,
                         "epoch": step // steps_per_epoch},
            provenance=checkpoint.Provenance.here(command or " ".join(sys.argv), world_size=world.world,
                                                  device=device.type, init_from=started_from),
        ).save(out / "checkpoint.pt")

    if world.main:
        out.mkdir(parents=True, exist_ok=True)
        if not state:
            (out / "metrics.jsonl").unlink(missing_ok=True)
        _log(out, {"event": "start", "step": step, "arch": config.arch, "shortcut": config.shortcut, "world_size": world.world,
                   "device": device.type, "resumed_from": str(resume) if resume else None, "config": config.to_dict()})
    path = out / "checkpoint.pt"
    net.train()
    while step < config.max_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        sampler.start(epoch, skip * config.batch_size)
        bar = progress.bar(f"epoch {epoch + 1}", steps_per_epoch, enabled=world.main, unit="step")
        bar.update(skip)  # a resumed epoch starts where it stopped
        window = [0.0, 0.0, 0, time.monotonic()]  # loss sum, hits, images, start
        for images, labels in train_loader:
            if finetune.set_phase(model, config, step):  # the head phase is over: train every weight
                net = DistributedDataParallel(model) if world.enabled else model
            images = images.to(device, non_blocking=True, memory_format=fmt)
            labels = labels.to(device, non_blocking=True)
            with autocast():
                logits = net(images)
                loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            window[0] += loss.item() * len(labels)
            window[1] += (logits.argmax(1) == labels).sum().item()
            window[2] += len(labels)
            done = step - epoch * steps_per_epoch
            if step % config.log_every == 0 or done == steps_per_epoch or step == config.max_steps:
                seconds = time.monotonic() - window[3]
                stats = {"loss": window[0] / window[2], "acc": 100 * window[1] / window[2],
                         "img_per_s": window[2] * world.world / seconds, "lr": optimizer.param_groups[0]["lr"]}
                check_finite()  # a bad weight can hide behind a finite loss: stop early, name it
                bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items()}, refresh=False)
                bar.update(done - bar.n)
                if world.main:
                    _log(out, {"event": "train", "epoch": epoch + 1, "step": step, **stats})
                window = [0.0, 0.0, 0, time.monotonic()]
            if config.save_every and step % config.save_every == 0 and world.main:
                path = save({**best, "step": step})
            if step >= config.max_steps:
                break
        bar.close()
        metrics = _evaluate(model, val_loader, device, autocast, fmt, world, len(train_set.class_ids))
        best = {"epoch": epoch + 1, "step": step, "val_top1": metrics["val_top1"], "val_top5": metrics["val_top5"]}
        if world.main:
            print(f"epoch {epoch + 1} step {step}: val top-1 err {metrics['val_top1_err']:.2f}% "
                  f"top-5 err {metrics['val_top5_err']:.2f}% ({metrics['val_images']} images)", file=sys.stderr)
            _log(out, {"event": "val", "epoch": epoch + 1, "step": step, **metrics})
            path = save(best)
    if world.enabled:
        dist.barrier()  # no rank returns before rank 0 has written the checkpoint
    return path
