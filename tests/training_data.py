"""Training helpers shared by the training tests: a tiny rgb + flow_tvl1 shard folder (the `shards_dir` fixture,
defined by tiny_shards_dir; a module imports tiny_shards_dir to use it), the tiny config that trains on it in
seconds (tiny_config), the engine running a method (method_engine), and the float64 model, batch and
gradients of the DDP tests with a free port for their process group."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from cocon.config import load_config
from cocon.data.shards import ShardWriter, encode_frames
from cocon.models.build import PerViewNetworks
from cocon.models.networks import DPC
from cocon.sources.records import VideoRecord
from cocon.train.engine import Engine
from cocon.train.methods import get_method

from conftest import tiny_training


def method_engine(method: str, views: list[str], cfg: dict, out: Path, init: dict) -> Engine:
    """The engine running `method` on `views` into `out`, initialised from `init` (view -> model.pt)."""
    return Engine(get_method(method)(cfg, views, init), out)


H, W, T = 36, 44, 16


def _video(rng, t=T):
    """A textured square moving with a random velocity over a textured background: (T, H, W, 3)."""
    bg = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    sq = rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)
    vx, vy = rng.integers(-2, 3, 2)
    out = np.empty((t, H, W, 3), np.uint8)
    for k in range(t):
        f = bg.copy()
        y, x = (5 + vy * k) % (H - 10), (5 + vx * k) % (W - 10)
        f[y : y + 10, x : x + 10] = sq
        out[k] = f
    return out


@pytest.fixture(scope="module", name="shards_dir")
def tiny_shards_dir(tmp_path_factory) -> Path:
    """The `shards_dir` fixture, once per test module that imports it:
    <dir>/shards/{rgb,flow_tvl1}/00000.h5 with 10 videos (2 classes, groups, train/test roles)."""
    root = tmp_path_factory.mktemp("train_data")
    rng = np.random.default_rng(0)
    recs, vids = [], []
    for i in range(10):
        label = i % 2
        recs.append(
            VideoRecord(
                f"c{label}/v{i:02d}",
                f"v{i}.avi",
                f"c{label}",
                label,
                f"g{i // 2}",
                {"1": "test" if i >= 8 else "train"},
            )
        )
        vids.append(_video(rng))
    rgb_enc, flow_enc = {"codec": "jpeg", "quality": 90}, {"codec": "raw"}
    meta = {"fps": 25.0, "orig_height": H, "orig_width": W, "orig_frames": T}
    with ShardWriter(root / "shards" / "rgb" / "00000.h5", "rgb", "00000", {"params": {}}, rgb_enc) as w:
        for r, v in zip(recs, vids):
            w.add_video(r, encode_frames(v, rgb_enc), meta)
    with ShardWriter(root / "shards" / "flow_tvl1" / "00000.h5", "flow_tvl1", "00000", {"params": {}}, flow_enc) as w:
        for r, v in zip(recs, vids):
            flow = rng.integers(100, 156, (T, H, W, 2), dtype=np.uint8)
            w.add_video(r, encode_frames(flow, flow_enc), meta)
    return root


def tiny_config(output_dir: Path, **sections: dict) -> dict:
    """tiny_training at width 8, 2 epochs of 2 steps per stage; `sections` update it key by key."""
    base = tiny_training(train={"width": 8}, cpc={"epochs": 2, "max_steps_per_epoch": 2}, cocon={"epochs": 2})
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return load_config(overrides={"output_dir": str(output_dir), **base})


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# float64: in float32 the encoder's early-layer gradients are ill-conditioned (40 BatchNorms, per-position
# L2 normalisation, logits / 0.005), so merely summing the batch statistics in another order moves them by
# up to ~6 %; in float64 the distributed and single-process gradients agree to ~1e-12.
def ddp_batch(seed=0, B=4):
    """A float64 rgb + flow_tvl1 batch (B, 4 blocks, C, 2 frames, 32, 32) from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return {
        "rgb": torch.randn(B, 4, 3, 2, 32, 32, generator=g, dtype=torch.float64),
        "flow_tvl1": torch.randn(B, 4, 2, 2, 32, 32, generator=g, dtype=torch.float64),
    }


def ddp_model():
    """An rgb + flow_tvl1 DPC pair in float64, seeded weights, no dropout."""
    torch.manual_seed(0)
    return PerViewNetworks(
        {
            "rgb": DPC(3, num_blocks=4, pred_steps=2, dropout=0.0),
            "flow_tvl1": DPC(2, num_blocks=4, pred_steps=2, dropout=0.0),
        }
    ).double()


def gradients(model) -> dict[str, torch.Tensor]:
    """Copies of the parameters' gradients (those that have one), by name."""
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
