"""Many processes under torchrun (`World`), and the data order that makes them, and a resumed run,
see exactly the batches of one uninterrupted run (`KeyedSampler`, `KeyedDataset`).

The data order is a function of (seed, epoch) (DistributedSampler) and each image's augmentation a
function of (seed, epoch, index) (`KeyedDataset`), never of worker count or of a global RNG stream,
so a run restarted from a mid-epoch checkpoint sees the same batches as one that never stopped.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler


class KeyedDataset(Dataset):
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


class KeyedSampler(Sampler):
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


class World:
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
