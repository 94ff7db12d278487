"""One training run of the paper experiments (training.paper.experiments): data held in memory as uint8
tensors, augmented on the device in batches, a resumable SGD loop with the probes of
training.paper.probes at chosen steps; the result is one JSON file.

Data order and augmentation are functions of (seed, step), not of a global RNG stream, so a run
resumed from its state file sees exactly the batches of a run that never stopped.

    from training.paper import runs as paper_runs
    sets = paper_runs.load_sets("digits", 16)
    result = paper_runs.train(paper_runs.Run(name="r20", arch="resnet20", data="digits", size=16,
                              seed=0, max_steps=100, batch=32, lr=0.025, lr_milestones=(50, 75)), sets, "out/")
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from artifact import write_atomically
from imagesets import synthetic
from training import cifar_models, models, progress
from training.paper import digits, probes
from training.config import lr_factor

DATASETS = ("digits", "synthetic", "cifar10")


@dataclass(frozen=True)
class Run:
    name: str  # file stem of the result: <out>/runs/<name>.json
    arch: str  # a name in training.models.ARCHS, or plainN / resnetN of the CIFAR family (N = 6n+2)
    data: str  # one of DATASETS
    size: int  # input side in pixels
    seed: int  # initialisation, data order, augmentation
    max_steps: int  # SGD steps
    batch: int  # images per step
    lr: float  # peak learning rate
    lr_milestones: tuple[int, ...] = ()  # steps at which lr is divided by 10
    warmup_steps: int = 0  # steps at lr/10 before the peak (sec. 4.2, 110+ layers)
    momentum: float = 0.9  # sec. 3.4
    weight_decay: float = 1e-4  # sec. 3.4
    shortcut: str | None = None  # Table 3's A/B/C for the ImageNet ResNets; None: the arch's own
    eval_every: int = 100  # steps between test-error evaluations; 0: none, not even at the end
    log_every: int = 0  # steps between train-loss records; 0: eval_every
    probe_at: tuple[int, ...] = ()  # steps at which the per-layer gradient norms are recorded
    responses: bool = False  # record the response stds (Figure 7) at the end
    save_every: int = 0  # steps between resumable state files; 0: never (short runs)
    # lr_factor (training.config) reads these: the paper's constant warm-up and step decay.
    warmup_method: str = field(default="constant", init=False)
    lr_schedule: str = field(default="step", init=False)


def build(arch: str, num_classes: int, shortcut: str | None = None) -> torch.nn.Module:
    """models.build, plus the CIFAR family at depths it does not name (plain1202 for sec. 4.2's question)."""
    if arch in models.ARCHS:
        return models.build(arch, num_classes, shortcut=shortcut)
    match = re.fullmatch(r"(plain|resnet)(\d+)", arch)
    if not match or (int(match.group(2)) - 2) % 6:
        raise ValueError(f"unknown arch {arch!r}: expected a name in training.models.ARCHS or plainN/resnetN with N = 6n+2")
    return cifar_models.CifarResNet((int(match.group(2)) - 2) // 6, num_classes, residual=match.group(1) == "resnet")


def load_sets(data: str, size: int, cifar_root: str = "") -> dict:
    """{"train": (uint8 images, labels), "test": (...), "mean", "std", "flip", "classes"} in memory."""
    if data == "digits":
        train, test, classes = digits.load("train", size), digits.load("test", size), list(digits.CLASSES)
        flip = False  # a mirrored 2 is not a 2
    elif data == "synthetic":
        def render(split: str, n: int):
            pairs = [synthetic.render(0, split, i, size) for i in range(n)]
            images = torch.from_numpy(__import__("numpy").stack([p for p, _ in pairs])).permute(0, 3, 1, 2).contiguous()
            return images, torch.tensor([label for _, label in pairs])
        train, test, classes, flip = render("train", 10000), render("val", 1000), [c for c, _ in synthetic.CLASSES], True
    elif data == "cifar10":
        train, test, classes = _cifar10(cifar_root, size)
        flip = True
    else:
        raise ValueError(f"data must be one of {DATASETS}, got {data!r}")
    pixels = train[0].float() / 255
    return {"train": train, "test": test, "classes": classes, "flip": flip,
            "mean": pixels.mean(dim=(0, 2, 3)), "std": pixels.std(dim=(0, 2, 3))}


def _cifar10(root: str, size: int):
    """Sec. 4.2's 45k/5k split of the training set (the 45k train here) and the 10k test set."""
    import torchvision

    from training.data import DataError

    root = root or str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cifar10")
    try:
        sets = [torchvision.datasets.CIFAR10(root, train=t, download=True) for t in (True, False)]
    except (OSError, RuntimeError) as error:
        raise DataError(f"CIFAR-10 is not in {root!r} and could not be downloaded ({error}); "
                        f"place cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html there") from error
    tensors = []
    for s in sets:
        images = torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous()
        if size != 32:
            images = F.interpolate(images.float(), size=(size, size), mode="bilinear").round().clamp(0, 255).to(torch.uint8)
        tensors.append((images, torch.tensor(s.targets)))
    keep = torch.randperm(len(tensors[0][1]), generator=torch.Generator().manual_seed(0))[:45000]
    return (tensors[0][0][keep], tensors[0][1][keep]), tensors[1], list(sets[0].classes)


def _batch(run: Run, sets: dict, step: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch `step` of the run: epoch order and augmentation are seeded by (seed, epoch) and (seed, step)."""
    images, labels = sets["train"]
    per_epoch = len(labels) // run.batch
    epoch, k = divmod(step, per_epoch)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(run.seed * 1_000_003 + epoch))
    index = order[k * run.batch:(k + 1) * run.batch]
    gen = torch.Generator().manual_seed(run.seed * 1_000_003 + 7_919 * step + 1)
    x = images[index].to(device).float() / 255
    # sec. 4.2: pad 4 pixels (at 32 px; in proportion otherwise), take a random crop, flip half.
    pad, n, size = max(1, 4 * run.size // 32), len(index), run.size
    x = F.pad(x, (pad,) * 4)
    dy, dx = (torch.randint(0, 2 * pad + 1, (2, n), generator=gen)).to(device)
    ar = torch.arange(size, device=device)
    rows, cols = (dy[:, None] + ar)[:, None, :, None], (dx[:, None] + ar)[:, None, None, :]
    x = x[torch.arange(n, device=device)[:, None, None, None], torch.arange(3, device=device)[None, :, None, None], rows, cols]
    if sets["flip"]:
        flip = (torch.rand(n, generator=gen) < 0.5).to(device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return _normalise(x, sets), labels[index].to(device)


def _normalise(x: torch.Tensor, sets: dict) -> torch.Tensor:
    return (x - sets["mean"].to(x.device)[:, None, None]) / sets["std"].to(x.device)[:, None, None]


def evaluate(model, images: torch.Tensor, labels: torch.Tensor, sets: dict, device, limit: int = 0) -> dict:
    """Top-1 error (%) and mean loss in eval mode on the first `limit` (0: all) images, unaugmented."""
    n = len(labels) if not limit else min(limit, len(labels))
    wrong, loss = 0, 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, n, 500):
            x = _normalise(images[i:min(i + 500, n)].to(device).float() / 255, sets)
            y = labels[i:min(i + 500, n)].to(device)
            logits = model(x).float()
            wrong += int((logits.argmax(1) != y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
    model.train()
    return {"err": 100 * wrong / n, "loss": loss / n}


def train(run: Run, sets: dict, out: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """Train `run` (continuing its state file if one exists) and write <out>/runs/<name>.json."""
    folder = Path(out) / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / f"{run.name}.state.pt"
    torch.manual_seed(run.seed)
    model = build(run.arch, len(sets["classes"]), run.shortcut).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=run.lr, momentum=run.momentum, weight_decay=run.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, run))
    record = {"run": asdict(run), "params": sum(p.numel() for p in model.parameters()), "train": [], "test": [],
              "grads": {}, "seconds": 0.0, "device": str(device), "threads": torch.get_num_threads()}
    step = 0
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        record, step = json.loads(state["record"]), state["step"]
    probe_x, probe_y = _batch(run, sets, 0, device)  # one fixed batch, so probes differ only by the weights
    log_every = run.log_every or run.eval_every or 1
    window, bar, start = [0.0, 0, 0], progress.bar(run.name, run.max_steps, unit="step"), time.monotonic()
    model.train()
    while step < run.max_steps:
        if step in run.probe_at and str(step) not in record["grads"]:
            record["grads"][str(step)] = probes.gradient_norms(model, probe_x, probe_y)
        x, y = _batch(run, sets, step, device)
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        if not torch.isfinite(loss):
            record["diverged_at"] = step
            break
        window = [window[0] + loss.item() * len(y), window[1] + int((logits.argmax(1) != y).sum()), window[2] + len(y)]
        if step % log_every == 0 or step == run.max_steps:
            # the paper's training error: of the (augmented) mini-batches since the last record
            record["train"].append({"step": step, "loss": window[0] / window[2], "err": 100 * window[1] / window[2],
                                    "lr": optimizer.param_groups[0]["lr"]})
            bar.set_postfix({"loss": f"{window[0] / window[2]:.4g}", "err": f"{100 * window[1] / window[2]:.4g}"}, refresh=False)
            bar.update(step - bar.n)
            window = [0.0, 0, 0]
        if run.eval_every and (step % run.eval_every == 0 or step == run.max_steps):
            record["test"].append({"step": step, **evaluate(model, *sets["test"], sets, device)})
        if run.save_every and step % run.save_every == 0 and step < run.max_steps:
            record["seconds"] += time.monotonic() - start
            start = time.monotonic()
            payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(), "step": step, "record": json.dumps(record)}
            write_atomically(state_path, lambda f: torch.save(payload, f))
    bar.close()
    if run.max_steps in run.probe_at and "diverged_at" not in record:
        record["grads"][str(run.max_steps)] = probes.gradient_norms(model, probe_x, probe_y)
    if run.responses and "diverged_at" not in record:
        record["responses"] = probes.response_stds(model, _normalise(sets["test"][0][:500].to(device).float() / 255, sets))
    if run.eval_every and run.max_steps:
        record["train_eval"] = evaluate(model, *sets["train"], sets, device, limit=2000)
    record["seconds"] += time.monotonic() - start
    write_atomically(folder / f"{run.name}.json", lambda f: f.write(json.dumps(record, indent=1).encode()))
    state_path.unlink(missing_ok=True)
    return record
