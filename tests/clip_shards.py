"""Small real shards for the loader tests (test_clips, test_clip_options, test_evaluate), written with
ShardWriter: rgb (JPEG) and flow_tvl1 (PNG) of videos of different lengths, one video failed in flow only, one
failed everywhere, and a strided 17-channel pose view (raw).

Every frame carries its index so that it can be read back through crop and resize: rgb frame k is a
static smooth texture (0..30) plus 6k, flow frame k has u = 20 + 2k everywhere (v is a texture), pose
frame j (rgb frame 1 + 2j) has channel 0 = 10 + 5j.

Fixtures (import the function into the test module to use them): `root` (clip_root), the folder of the
shards of every view; `shards` (clip_shard_paths), its shard files by view."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cocon.data.clips import discover
from cocon.data.shards import ShardWriter, encode_frames
from cocon.sources.records import VideoRecord

H, W = 40, 48  # rgb and flow frame size; pose is stored at half size
BOUND = 20.0
RGB_STEP, FLOW_BASE, FLOW_STEP, POSE_BASE, POSE_STEP = 6, 20, 2, 10, 5
VIEWS = ["rgb", "flow_tvl1"]
ENC = {"rgb": {"codec": "jpeg", "quality": 90}, "flow_tvl1": {"codec": "png", "level": 1}, "pose": {"codec": "raw"}}

# (video_id, frames, group, splits, views where it failed); shards of 4 and 6 rows
VIDEOS = [
    ("A/v0", 36, "A_g1", {"1": "train", "2": "test"}, ()),
    ("A/v1", 15, "A_g1", {"1": "train", "2": "train"}, ()),
    ("A/v2", 20, "A_g2", {"1": "train", "2": "train"}, ("flow_tvl1",)),
    ("B/v3", 8, "", {"1": "test", "2": "train"}, ()),
    ("B/v4", 30, "B_g1", {"1": "train", "2": "unused"}, ()),
    ("B/v5", 25, "B_g2", {"1": "train", "2": "train"}, ("rgb", "flow_tvl1", "pose")),
    ("C/v6", 25, "C_g1", {"1": "train", "2": "test"}, ()),
    ("C/v7", 36, "", {"1": "train", "2": "train"}, ()),
    ("C/v8", 12, "C_g2", {"1": "test", "2": "train"}, ()),
    ("C/v9", 22, "C_g1", {"1": "train", "2": "train"}, ()),
]
SHARDS = {"00000": VIDEOS[:4], "00001": VIDEOS[4:]}


def texture(h: int, w: int, seed: int, lo: float, hi: float, channels: int = 3) -> np.ndarray:
    """Smooth random texture (h, w, channels) float32 stretched to [lo, hi]."""
    noise = cv2.GaussianBlur(np.random.default_rng(seed).random((h, w, channels), dtype=np.float32), (0, 0), 2.0)
    noise = noise.reshape(h, w, channels)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return lo + (hi - lo) * noise


def rgb_frames(n: int, seed: int) -> np.ndarray:
    tex = texture(H, W, seed, 0, 30)
    return np.stack([np.rint(tex + RGB_STEP * k) for k in range(n)]).astype(np.uint8)


def flow_frames(n: int, seed: int) -> np.ndarray:
    v = np.rint(texture(H, W, seed + 100, 0, 255, 1)[..., 0]).astype(np.uint8)
    out = np.empty((n, H, W, 2), np.uint8)
    out[..., 0] = FLOW_BASE + FLOW_STEP * np.arange(n, dtype=np.uint8)[:, None, None]
    out[..., 1] = v
    return out


def pose_frames(n_rgb: int, seed: int) -> np.ndarray:
    n = n_rgb // 2  # rgb frames 1, 3, 5, ...
    tex = np.rint(texture(H // 2, W // 2, seed + 200, 0, 255, 17)).astype(np.uint8)
    out = np.repeat(tex[None], n, axis=0)
    out[..., 0] = POSE_BASE + POSE_STEP * np.arange(n, dtype=np.uint8)[:, None, None]
    return out


MAKERS = {"rgb": rgb_frames, "flow_tvl1": flow_frames, "pose": pose_frames}


def record(vid, group, splits) -> VideoRecord:
    label = vid.split("/")[0]
    return VideoRecord(vid, f"/data/{vid}.avi", label, "ABC".index(label), group, splits)


def write_view(root, view: str, videos=SHARDS, rename=None) -> None:
    attrs = {"stage": view, "params": {"bound": BOUND} if view.startswith("flow") else {}, "dataset": {"name": "t"}}
    if view == "pose":
        attrs.update(frame_stride=2, frame_offset=1)
    for name, rows in videos.items():
        with ShardWriter(root / "shards" / view / f"{name}.h5", view, name, attrs, ENC[view]) as w:
            for vid, t, group, splits, failed in rows:
                rec = record((rename or {}).get(vid, vid), group, splits)
                if view in failed:
                    w.add_failure(rec, "broken on purpose")
                else:
                    frames = MAKERS[view](t, VIDEOS.index((vid, t, group, splits, failed)))
                    w.add_video(rec, encode_frames(frames, ENC[view]), {"fps": 25.0})


@pytest.fixture(scope="module", name="root")
def clip_root(tmp_path_factory):
    """The `root` fixture: a folder with the shards of every view (rgb, flow_tvl1, pose), once per module."""
    root = tmp_path_factory.mktemp("clips")
    for view in ("rgb", "flow_tvl1", "pose"):
        write_view(root, view)
    return root


@pytest.fixture(scope="module", name="shards")
def clip_shard_paths(root):
    """The `shards` fixture: the shard files of `root` by view (cocon.data.clips.discover)."""
    return discover(root, ["rgb", "flow_tvl1", "pose"])
