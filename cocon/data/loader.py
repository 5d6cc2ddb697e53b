"""The DataLoader of the datasets (docs/loader.md, "Determinism"): a DistributedSampler order seeded with
seed + epoch, `set_epoch` for the dataset and the sampler together, and workers started clean, with one
OpenCV and one torch thread each."""

from __future__ import annotations

import multiprocessing

import cv2
import torch
from torch.utils.data import DataLoader, DistributedSampler

from cocon.data.datasets import MultiViewClips

__all__ = ["ClipLoader", "make_loader", "worker_context", "worker_init"]


class ClipLoader(DataLoader):
    """A DataLoader whose `set_epoch(epoch)` sets the epoch of both the dataset (augmentation and
    temporal draws) and the sampler (order). Call it before iterating each epoch: workers are started
    per iteration (no persistent workers), so they see the epoch that was set."""

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)


def worker_context() -> str:
    """The start method of the workers: a clean forkserver where there is one, else spawn."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def worker_init(_worker_id: int) -> None:
    """One OpenCV and one torch thread per worker."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_loader(
    dataset: MultiViewClips,
    batch_size: int,
    workers: int = 0,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> ClipLoader:
    """DataLoader over `dataset` with the default collate ({view: (B, N, C, K, H, W), label, index, group}, or
    the uint8 canvases and "aug/..." parameters stacked for output="uint8"; pin_memory for a CUDA device).

    Order: a DistributedSampler, over the initialised process group when `distributed` and
    torch.distributed is initialised, otherwise a single replica (num_replicas=1), so the order is
    torch.randperm seeded with seed + epoch in both cases. `epoch` is set now; call set_epoch later."""
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    else:
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed, drop_last=drop_last)
    loader = ClipLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=worker_init if workers > 0 else None,
        persistent_workers=False,
        # workers come from a clean forkserver, never forked from a process with live threads (OpenCV,
        # torch, thread pools), which can deadlock the child; the dataset pickles light
        multiprocessing_context=worker_context() if workers > 0 else None,
    )
    loader.set_epoch(epoch)
    return loader
