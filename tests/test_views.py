"""The views registry (cocon.views): the schema agrees with it, each kind's flip rule is what the loader
applies, and a view registered from outside the package is computed, loaded and trained on (the recipe
of docs/adding_a_view.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cocon import views as V
from cocon.config import SCHEMA_PATH, ConfigError, load_config, schema
from cocon.data.clips import Augmentation, MultiViewClips, discover
from cocon.data.shards import ShardReader, ShardWriter, encode_frames
from cocon.preprocess import stage
from cocon.sources.records import VideoRecord
from cocon.train.checkpoints import load_checkpoint
from cocon.train.engine import Engine
from cocon.train.methods import CPC, CoCon, Finetune

from conftest import tiny_training

H, W, T = 36, 44, 16


def test_schema_names_views_from_the_registry_only():
    s = schema()["properties"]
    assert s["train"]["properties"]["views"]["items"]["enum"] == V.all_views()
    assert set(s["train"]["properties"]["input_size"]["properties"]) == set(V.KINDS)
    assert set(s["evaluate"]["properties"]["ensemble_weights"]["properties"]) == set(V.all_views())
    raw = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]  # the file itself lists no view by hand
    assert raw["train"]["properties"]["views"]["items"] == {}
    assert raw["train"]["properties"]["input_size"]["properties"] == {}
    assert raw["evaluate"]["properties"]["ensemble_weights"]["properties"] == {}
    cfg = load_config()
    assert V.enabled_views(cfg) == ["rgb", "flow_tvl1", "flow_farneback"]  # pose/seg off by default
    with pytest.raises(ConfigError, match="train.views.*set pose.enabled: true"):
        load_config(overrides={"train": {"views": ["rgb", "pose"]}})
    with pytest.raises(ConfigError, match="train.views.*add 'farneback' to flow.methods"):
        load_config(overrides={"flow": {"methods": ["tvl1"]}, "train": {"views": ["rgb", "flow_farneback"]}})


def test_flip_rules_of_the_kinds():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 4, 5, 17), dtype=np.uint8)
    pose = V.kind_of("pose").flip.apply(frames)
    left, right = V.COCO_KEYPOINTS.index("left_wrist"), V.COCO_KEYPOINTS.index("right_wrist")
    np.testing.assert_array_equal(pose[..., right], frames[:, :, ::-1, left])  # left and right swap
    np.testing.assert_array_equal(pose[..., 0], frames[:, :, ::-1, 0])  # the nose stays
    np.testing.assert_array_equal(V.kind_of("pose").flip.apply(pose), frames)  # an involution
    flow = V.kind_of("flow_tvl1").flip.apply(frames[..., :2])
    np.testing.assert_array_equal(flow[..., 0], 255 - frames[:, :, ::-1, 0])  # u negated exactly
    np.testing.assert_array_equal(flow[..., 1], frames[:, :, ::-1, 1])


def _record(i: int) -> VideoRecord:
    return VideoRecord(
        f"c{i % 2}/v{i:02d}", f"v{i}.avi", f"c{i % 2}", i % 2, f"g{i // 2}", {"1": "test" if i >= 8 else "train"}
    )


def _rgb_shard(root: Path, n: int = 10) -> Path:
    """An rgb shard of n videos: a textured square moving over a textured background."""
    rng = np.random.default_rng(0)
    enc = {"codec": "jpeg", "quality": 90}
    path = root / "shards" / "rgb" / "00000.h5"
    with ShardWriter(path, "rgb", "00000", {"params": {}}, enc) as w:
        for i in range(n):
            bg = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            sq = rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)
            vx, vy = rng.integers(-2, 3, 2)
            video = np.repeat(bg[None], T, axis=0)
            for k in range(T):
                y, x = (5 + vy * k) % (H - 10), (5 + vx * k) % (W - 10)
                video[k, y : y + 10, x : x + 10] = sq
            w.add_video(_record(i), encode_frames(video, enc), {"fps": 25.0})
    return path


def test_pose_view_flips_left_and_right_keypoints(tmp_path):
    """A pose shard whose left-wrist map is lit on the left half only: flipped, the right-wrist channel
    holds the mirrored map and the left-wrist channel is dark (the loader used to mirror without swapping)."""
    left, right = V.COCO_KEYPOINTS.index("left_wrist"), V.COCO_KEYPOINTS.index("right_wrist")
    enc = {"codec": "raw"}
    maps = np.zeros((T, 32, 32, 17), np.uint8)
    maps[..., :16, left] = 255
    for view in ("pose",):
        with ShardWriter(tmp_path / "shards" / view / "00000.h5", view, "00000", {"params": {}}, enc) as w:
            for i in range(4):
                w.add_video(_record(i), encode_frames(maps, enc), {"fps": 25.0})
    still = Augmentation(crop_scale=(1, 1), crop_ratio=(1, 1), p_flip=1.0, intensity_crop=False)
    ds = MultiViewClips(
        discover(tmp_path, ["pose"]),
        views=["pose"],
        holdout_fraction=0,
        num_blocks=2,
        block_len=2,
        stride=1,
        sizes={"pose": 32},
        augmentation=still,
    )
    x = ds[0]["pose"]  # (N, 17, K, 32, 32), values q / 255
    assert float(x[:, left].max()) == 0.0
    assert float(x[:, right, :, :, 16:].min()) == 1.0 and float(x[:, right, :, :, :16].max()) == 0.0


# ------------------------------------------------------------------ a view registered from outside


def _edges(row: int, idx: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """The toy view: |horizontal gradient| of the grey frames, uint8 (T, H, W, 1)."""
    grey = frames.astype(np.float32).mean(axis=-1)
    g = np.abs(np.diff(grey, axis=2, prepend=grey[:, :, :1]))
    return np.clip(g, 0, 255).astype(np.uint8)[..., None]


@pytest.fixture
def edges_kind():
    kind = V.register(V.ViewKind(name="edges", channels=1, default_size=32, mean=(0.0,), std=(1.0,)))
    yield kind
    V.unregister("edges")


def test_a_registered_view_is_computed_loaded_and_trained(tmp_path, edges_kind, one_torch_thread):
    rgb = _rgb_shard(tmp_path)
    out = tmp_path / "shards" / "edges" / "00000.h5"
    failures = stage.derive_view(
        "edges",
        str(rgb),
        "00000",
        str(out),
        {"encoding": {"codec": "png", "level": 1}},
        {"name": "t", "format": "csv"},
        {},
        _edges,
    )
    assert failures == []
    r = ShardReader(out)
    assert r.attrs["view"] == "edges" and r.read(0).shape == (T, H, W, 1)

    training = tiny_training(
        train={"views": ["rgb", "edges"], "input_size": {"rgb": 32, "edges": 32}}, cpc={"max_steps_per_epoch": 2}
    )
    cfg = load_config(
        overrides={
            "output_dir": str(tmp_path),
            **training,
            "finetune": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2},
        }
    )
    assert cfg["evaluate"]["ensemble_weights"]["edges"] == 1.0  # the kind's default, from the registry
    stage1 = {}
    for view in ("rgb", "edges"):
        Engine(CPC(cfg, [view]), tmp_path / "cpc" / view).fit()
        stage1[view] = str(tmp_path / "cpc" / view / "model.pt")
    cocon = Engine(CoCon(cfg, ["rgb", "edges"], stage1), tmp_path / "cocon")
    history = cocon.fit()
    assert {"train/sync/edges-rgb", "train/sim/edges-rgb", "train/cpc/edges"} <= set(history[0])
    assert all(np.isfinite(v) for v in history[0].values())
    weights = load_checkpoint(tmp_path / "cocon" / "model.pt")["models"]["edges"]
    assert weights["encoder.conv1.weight"].shape[1] == 1  # a one-channel encoder
    ft = Engine(Finetune(cfg, ["edges"], {"edges": str(tmp_path / "cocon" / "model.pt")}, "cocon"), tmp_path / "ft")
    ft.fit()
    batch = ft.finish(next(iter(ft.train_loader)), ft.device)  # the network input of a training step
    assert batch["edges"].shape == (2, 4, 1, 2, 32, 32) and batch["edges"].dtype == torch.float32
