"""Checkpoint files of a training run: what they hold, how they are identified and loaded.

A checkpoint is a plain dict of tensors and Python values (docs/training.md), loadable with
``torch.load(path, weights_only=True)``; it is written atomically (cocon.files.save_torch)."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import numpy as np
import torch

from cocon.data.clips import discover
from cocon.provenance import dumps

CHECKPOINT_VERSION = 2
INPUTS_FILE = "inputs.txt"


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint or model.pt written by the engine (tensors and plain Python types only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def run_hash(identity: dict) -> str:
    """Short hash of what a run is (method, views, hyper-parameters, seed, dataset, inits): resuming a
    checkpoint of another run is refused."""
    return hashlib.sha256(dumps(identity).encode()).hexdigest()[:16]


def input_fingerprint(output_dir: str, views: list[str], init: dict[str, str]) -> str:
    """Hash of what a run reads besides its config: every shard's (path, size, mtime) and the bytes of
    the init models. Kept in checkpoints/inputs.txt (not in the checkpoints, which stay byte-identical
    across reruns: this holds file times); a resume with other inputs (rewritten shards, a retrained
    init model) starts afresh instead of resuming into stale weights."""
    digest = hashlib.sha256()
    for view, paths in sorted(discover(output_dir, views).items()):
        for p in paths:
            st = os.stat(p)
            digest.update(f"{view}\0{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for view, path in sorted(init.items()):
        with open(path, "rb") as fh:
            digest.update(view.encode() + b"\0" + hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()[:16]


def rng_state() -> dict:
    """Every RNG's state in types that torch.load(weights_only=True) accepts (kept for provenance; the
    engine re-seeds every epoch from (seed, epoch, rank), which is what makes resume exact)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch/numpy/python seed of one epoch on one process: dropout masks differ across DDP ranks
    and epochs, and an epoch's draws depend only on (seed, epoch, rank), never on what ran before."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(epoch)}:{int(rank)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # CUDA too
    np.random.seed(seed % 2**32)
    random.seed(seed)
