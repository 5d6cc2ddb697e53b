"""The original's training crop of flow (and pose, seg): of 3 fixed-size squares at random places, the one
whose clip moves most. On a real flow shard whose motion sits in one corner, the chosen crops hold more
motion than the random-area crops of rgb, and every choice is the most intense of its candidates."""

from __future__ import annotations

import numpy as np
import pytest

from cocon import views as V
from cocon.data.augment import Augmentation, intensity_box
from cocon.data.clips import MultiViewClips, discover
from cocon.data.shards import ShardWriter, encode_frames
from cocon.sources.records import VideoRecord

H, W, T = 48, 64, 16
ENC = {"codec": "png", "level": 1}
CORNER = 16  # motion only in the top-left CORNER x CORNER px: flow u = v = +10 px at bound 20 (q = 191)


def corner_flow(n: int = T) -> np.ndarray:
    """uint8 (n, H, W, 2) quantised flow: still (q = 128) everywhere but the top-left corner."""
    x = np.full((n, H, W, 2), 128, np.uint8)
    x[:, :CORNER, :CORNER] = 191
    return x


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("intensity")
    with ShardWriter(
        root / "shards" / "flow_tvl1" / "00000.h5", "flow_tvl1", "00000", {"params": {"bound": 20.0}}, ENC
    ) as w:
        for i in range(4):
            rec = VideoRecord(f"c/v{i}", f"v{i}.avi", "c", 0, f"g{i}", {"1": "train"})
            w.add_video(rec, encode_frames(corner_flow(), ENC), {"fps": 25.0})
    return discover(root, ["flow_tvl1"])


def crop_motion(ds: MultiViewClips, i: int) -> float:
    """Mean |q - 127.5| of the uint8 crop a training sample copies to its canvas (zero outside the crop)."""
    x = ds.sample(i)["flow_tvl1"].numpy().astype(np.float32)  # (N*K, Hc, Wc, 2)
    inside = x.any(axis=(0, 3))
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    return float(np.abs(x[:, : rows[-1] + 1, : cols[-1] + 1] - 127.5).mean())


def dataset(shards, intensity: bool) -> MultiViewClips:
    return MultiViewClips(
        shards,
        views=["flow_tvl1"],
        holdout_fraction=0,
        seed=3,
        num_blocks=2,
        block_len=2,
        stride=1,
        sizes={"flow": 32},
        augmentation=Augmentation(intensity_crop=intensity),
        output="uint8",
    )


def test_the_chosen_square_is_the_most_intense_of_its_candidates():
    rule = V.kind_of("flow_tvl1").intensity_crop
    assert (rule.side, rule.measure, rule.candidates) == (224 / 240, "deviation", 3)
    assert V.kind_of("pose").intensity_crop.side == V.kind_of("seg").intensity_crop.side == 0.8
    assert V.kind_of("rgb").intensity_crop is None
    images, inverse = corner_flow(6), np.array([0, 1, 2, 2, 3, 5])  # frame 2 counts twice, frame 4 not at all
    side = round(rule.side * H)
    clip = images[inverse].astype(np.float64)
    for seed in range(50):
        x0, y0, bw, bh = intensity_box(images, inverse, rule, np.random.default_rng(seed))
        assert bw == bh == side
        rng = np.random.default_rng(seed)  # the candidates, as intensity_box draws them
        scores = []
        for _ in range(3):
            ux, uy = rng.random(2)
            cx, cy = min(int(ux * (W - side + 1)), W - side), min(int(uy * (H - side + 1)), H - side)
            scores.append(np.abs(clip[:, cy : cy + side, cx : cx + side] - 127.5).mean())
        chosen = np.abs(clip[:, y0 : y0 + side, x0 : x0 + side] - 127.5).mean()
        assert np.isclose(chosen, max(scores))


def test_flow_crops_follow_the_motion_unless_switched_off(shards):
    """Over many samples and epochs, the intensity crop holds more of the corner's motion than the plain
    random-area crop (the switch train.intensity_crop: false), and its boxes are squares of 224/240 x 48."""
    got = {}
    for intensity in (True, False):
        ds = dataset(shards, intensity)
        vals = []
        for epoch in range(6):
            ds.set_epoch(epoch)
            vals += [crop_motion(ds, i) for i in range(len(ds))]
        got[intensity] = np.mean(vals)
    assert got[True] > got[False] + 2.0, got
    # the same draws for a view without the rule: rgb's stream is unchanged by the switch
    assert Augmentation().intensity_crop and not Augmentation(intensity_crop=False).intensity_crop
