"""Tests of cocon.data.clips, the multi-view training loader, on small real shards (tests/clip_shards.py)
written with ShardWriter: rgb (JPEG) and flow_tvl1 (PNG) of videos of different lengths, one video failed in
flow only, one failed everywhere, and a strided 17-channel pose view (raw) to check that views with their
own frame stride plug in.

Every frame carries its index so that it can be read back through crop and resize: rgb frame k is a
static smooth texture (0..30) plus 6k, flow frame k has u = 20 + 2k everywhere (v is a texture), pose
frame j (rgb frame 1 + 2j) has channel 0 = 10 + 5j."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from cocon import views as V
from cocon.data import reading
from cocon.data.clips import (
    Augmentation,
    ClipsError,
    DenseClips,
    MultiViewClips,
    clip_indices,
    dense_windows,
    discover,
    group_id,
    holdout,
    make_loader,
    video_table,
    view_frame_indices,
)
from cocon.data.shards import ShardReader
from cocon.preprocess.flow import dequantize
from cocon.sources.records import VideoRecord

from clip_shards import (  # noqa: F401  (clip_root, clip_shard_paths: the root and shards fixtures)
    BOUND,
    FLOW_BASE,
    FLOW_STEP,
    POSE_BASE,
    POSE_STEP,
    RGB_STEP,
    VIDEOS,
    VIEWS,
    H,
    W,
    clip_root,
    clip_shard_paths,
    texture,
    write_view,
)

SMALL = dict(num_blocks=4, block_len=3, stride=2, sizes={"rgb": 32, "flow": 24, "pose": 16})  # clip: 23 frames


def ids(ds) -> list[str]:
    return [v.video_id for v in ds.videos]


# ------------------------------------------------------------------ reading frame indices back


def rgb_k(x: torch.Tensor, video_id: str, box=(4, 0, 40, 40)) -> np.ndarray:
    """Frame indices (N*K,) from an rgb tensor (N, 3, K, S, S) made without colour augmentation."""
    mean = np.array(V.IMAGENET_MEAN, np.float32)[None, :, None, None, None]
    std = np.array(V.IMAGENET_STD, np.float32)[None, :, None, None, None]
    u8 = (x.numpy() * std + mean) * 255
    seed = [v[0] for v in VIDEOS].index(video_id)
    x0, y0, bw, bh = box
    tex_mean = texture(H, W, seed, 0, 30)[y0 : y0 + bh, x0 : x0 + bw].mean()
    return np.rint((u8.mean(axis=(1, 3, 4)).reshape(-1) - tex_mean) / RGB_STEP).astype(int)


def flow_q(x: torch.Tensor) -> np.ndarray:
    return (x.numpy() + 1) * 127.5


def flow_k(x: torch.Tensor) -> np.ndarray:
    """Frame indices (N*K,) from a flow tensor (N, 2, K, S, S): u is constant in each frame."""
    u = flow_q(x)[:, 0]
    assert np.allclose(u, u[..., :1, :1], atol=1e-3)  # constant within each frame, through crop and resize
    return np.rint((u.mean(axis=(2, 3)).reshape(-1) - FLOW_BASE) / FLOW_STEP).astype(int)


# ------------------------------------------------------------------ discovery and the video table


def test_discover(root, tmp_path):
    found = discover(root, VIEWS)
    assert [p.name for p in found["rgb"]] == ["00000.h5", "00001.h5"] == [p.name for p in found["flow_tvl1"]]
    (tmp_path / "shards" / "rgb").mkdir(parents=True)
    (tmp_path / "shards" / "flow_tvl1").mkdir(parents=True)
    for name in ("00000", "00001", "00002"):
        (tmp_path / "shards" / "rgb" / f"{name}.h5").touch()
    (tmp_path / "shards" / "flow_tvl1" / "00001.h5").touch()
    (tmp_path / "shards" / "flow_tvl1" / "00001.h5.partial").touch()
    with pytest.raises(ClipsError, match=r"flow_tvl1 lacks 00000, 00002"):
        discover(tmp_path, VIEWS)
    with pytest.raises(ClipsError, match="no shards for view"):
        discover(tmp_path, ["rgb", "seg"])


def test_video_table_excludes_videos_failed_in_any_view(shards):
    all_ok = {v[0] for v in VIDEOS if not v[4]}
    table = video_table(shards, VIEWS)
    assert {v.video_id for v in table} == all_ok  # A/v2 (flow failed) and B/v5 (failed everywhere) excluded
    assert {v.video_id for v in video_table(shards, ["rgb"])} == all_ok | {"A/v2"}
    v0 = next(v for v in table if v.video_id == "A/v0")
    assert (v0.shard_name, v0.row, v0.n_frames, v0.label_index, v0.group) == ("00000", 0, 36, 0, "A_g1")
    for split in ("1", "2"):
        for role in ("train", "val", "test"):
            ds = MultiViewClips(shards, VIEWS, split=split, role=role, holdout_fraction=0.3, **SMALL)
            assert set(ids(ds)) <= all_ok


def test_video_id_disagreement_is_an_error(root, tmp_path):
    write_view(tmp_path, "rgb")
    write_view(tmp_path, "flow_tvl1", rename={"C/v7": "C/v7_other"})
    with pytest.raises(ClipsError, match=r"shard 00001 row 3: video_id 'C/v7' in rgb but 'C/v7_other' in flow_tvl1"):
        video_table(discover(tmp_path, VIEWS))
    only = {"rgb": discover(root, ["rgb"])["rgb"], "flow_tvl1": discover(root, ["flow_tvl1"])["flow_tvl1"][:1]}
    with pytest.raises(ClipsError, match="different shard lists"):
        video_table(only)


# ------------------------------------------------------------------ roles and holdout


def test_roles_per_split(shards):
    for split in ("1", "2"):
        train_role = {v[0] for v in VIDEOS if not v[4] and v[3].get(split) == "train"}
        test_role = {v[0] for v in VIDEOS if not v[4] and v[3].get(split) == "test"}
        kw = dict(views=VIEWS, split=split, holdout_fraction=0.25, holdout_seed=3, **SMALL)
        train = set(ids(MultiViewClips(shards, role="train", **kw)))
        val = set(ids(MultiViewClips(shards, role="val", **kw)))
        test = set(ids(MultiViewClips(shards, role="test", **kw)))
        assert test == test_role and train | val == train_role
        assert not train & val and not val & test and val and train
        assert len(MultiViewClips(shards, role="train", **{**kw, "holdout_fraction": 0})) == len(train_role)
        # the holdout does not depend on the views loaded: rgb alone adds A/v2 (failed in flow only)
        rgb_val = set(ids(MultiViewClips(shards, role="val", **{**kw, "views": ["rgb"]})))
        assert rgb_val - {"A/v2"} == val
    # split 1: A/v0 and A/v1 share group A_g1, so they are on the same side
    kw = dict(views=VIEWS, split=1, **SMALL)
    for seed in range(6):
        val = set(ids(MultiViewClips(shards, role="val", holdout_fraction=0.3, holdout_seed=seed, **kw)))
        assert {"A/v0", "A/v1"} <= val or not {"A/v0", "A/v1"} & val
        assert {"C/v6", "C/v9"} <= val or not {"C/v6", "C/v9"} & val


def test_holdout_deterministic_and_group_aware():
    recs = []
    for g in range(30):
        for c in range(g % 4 + 1):  # groups of 1..4 clips
            recs.append(VideoRecord(f"X/v{g:02d}_{c}", "", "X", 0, f"X_g{g:02d}", {"1": "train"}))
    recs += [VideoRecord(f"Y/solo{i}", "", "Y", 1, "", {"1": "train"}) for i in range(10)]
    train, val = holdout(recs, 0.2, seed=7)
    assert (train, val) == holdout(list(recs), 0.2, seed=7)  # deterministic
    assert holdout(recs, 0.2, seed=8) != (train, val)
    assert len(train) + len(val) == len(recs) and not {r.video_id for r in train} & {r.video_id for r in val}
    assert [r for r in recs if r in train] == train  # input order kept
    assert abs(len(val) - 0.2 * len(recs)) <= 4  # overshoot at most one group
    val_groups = {r.group for r in val if r.group}
    assert not val_groups & {r.group for r in train if r.group}
    assert holdout(recs, 0.0) == (recs, [])
    tiny = recs[:1] + recs[-1:]  # two groups: one each side whatever the fraction
    for f in (0.01, 0.5, 0.99):
        t, v = holdout(tiny, f, seed=1)
        assert len(t) == 1 and len(v) == 1
    one = [r for r in recs if r.group == "X_g03"]  # a single group stays in train
    assert holdout(one, 0.5) == (one, [])
    with pytest.raises(ValueError):
        holdout(recs, 1.0)
    # group ids: equal within a group, distinct for empty groups, stable
    assert group_id(recs[1]) == group_id(recs[2]) != group_id(recs[0])
    assert group_id(recs[-1]) != group_id(recs[-2]) and group_id(recs[-1]) == group_id(recs[-1])


# ------------------------------------------------------------------ samples


def test_shapes_dtypes_and_collate(shards):
    ds = MultiViewClips(shards, VIEWS + ["pose"], split=1, role="train", seed=1)  # paper defaults
    val = MultiViewClips(shards, VIEWS + ["pose"], split=1, role="val")  # default holdout 0.1
    assert len(ds) + len(val) == 6 and len(val) >= 1
    s = ds[0]
    assert s["rgb"].shape == (8, 3, 5, 128, 128) and s["rgb"].dtype == torch.float32
    assert s["flow_tvl1"].shape == (8, 2, 5, 128, 128) and s["flow_tvl1"].dtype == torch.float32
    assert s["pose"].shape == (8, 17, 5, 64, 64) and s["pose"].dtype == torch.float32
    for key in ("label", "index", "group"):
        assert s[key].dtype == torch.int64 and s[key].shape == ()
    assert int(s["index"]) == 0 and int(s["label"]) == ds.videos[0].label_index
    assert int(s["group"]) == group_id(ds.videos[0])
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["rgb"].shape == (3, 8, 3, 5, 128, 128) and batch["flow_tvl1"].shape == (3, 8, 2, 5, 128, 128)
    assert batch["label"].shape == (3,) and batch["index"].tolist() == [0, 1, 2]
    assert -1 <= float(batch["flow_tvl1"].min()) and float(batch["flow_tvl1"].max()) <= 1
    assert 0 <= float(batch["pose"].min()) and float(batch["pose"].max()) <= 1


def test_same_frame_indices_in_every_view(shards):
    for augment in (False, True):
        ds = MultiViewClips(shards, VIEWS, split=1, role="train", augment=augment, holdout_fraction=0, seed=5, **SMALL)
        for epoch in (0, 1):
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                s, want = ds[i], ds.frame_indices(i)
                assert np.array_equal(flow_k(s["flow_tvl1"]), want)
                if not augment:
                    assert np.array_equal(rgb_k(s["rgb"], ds.videos[i].video_id), want)


def test_clip_sampling_and_short_video_rule(shards):
    rng = np.random.default_rng(0)
    for n in range(1, 60):
        idx = clip_indices(n, 4, 3, 2, rng)
        assert len(idx) == 12 and idx.min() >= 0 and idx.max() < n and np.all(np.diff(idx) >= 0)
        d = np.diff(idx)
        if n >= 23:
            assert np.all(d == 2)  # the full stride fits
        elif n >= 12:
            assert np.all(d == (n - 1) // 11)  # stride shrunk, never dropped
        else:
            assert np.array_equal(idx, np.arange(12) * n // 12) and set(idx) == set(range(n))  # stretched
    starts = {int(clip_indices(30, 4, 3, 2, np.random.default_rng(s))[0]) for s in range(200)}
    assert starts == set(range(8))  # uniform over every start that fits: 0..30-23
    assert np.array_equal(clip_indices(30, 4, 3, 2), 3 + 2 * np.arange(12))  # centre clip
    # the paper's clip (8 x 5, stride 3 = 118 frames) on videos of 8..36 frames: every video kept
    assert len(MultiViewClips(shards, VIEWS, split=1, role="train", holdout_fraction=0)) == 6
    # read back through the shards: test role (centre clip) of split 1 = B/v3 (8 frames), C/v8 (12 frames)
    test = MultiViewClips(shards, VIEWS, split=1, role="test", **SMALL)
    assert ids(test) == ["B/v3", "C/v8"]
    assert np.array_equal(flow_k(test[0]["flow_tvl1"]), [0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7])
    assert np.array_equal(rgb_k(test[0]["rgb"], "B/v3"), [0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7])
    assert np.array_equal(flow_k(test[1]["flow_tvl1"]), np.arange(12))
    train = MultiViewClips(shards, VIEWS, split=1, role="train", holdout_fraction=0, **SMALL)
    by_id = {v.video_id: i for i, v in enumerate(train.videos)}
    for epoch in range(3):
        train.set_epoch(epoch)
        assert np.all(np.diff(flow_k(train[by_id["A/v0"]]["flow_tvl1"])) == 2)  # 36 frames
        assert np.all(np.diff(flow_k(train[by_id["A/v1"]]["flow_tvl1"])) == 1)  # 15 frames


def test_view_with_own_frame_stride(shards):
    """pose holds rgb frames 1, 3, 5, ... (frame_stride 2, frame_offset 1): each rgb index reads the
    nearest pose frame."""
    assert np.array_equal(view_frame_indices(np.arange(8), 4, 2, 1), [0, 0, 1, 1, 2, 2, 3, 3])
    assert np.array_equal(view_frame_indices(np.arange(4), 10), np.arange(4))
    ds = MultiViewClips(shards, ["rgb", "pose"], split=1, role="train", holdout_fraction=0, augment=True, **SMALL)
    for i in range(len(ds)):
        v = ds.videos[i]
        assert v.n_frames == 2 * (dict((x[0], x[1]) for x in VIDEOS)[v.video_id] // 2)  # pose covers 0..2*(T//2)-1
        s = ds[i]
        j = np.rint(s["pose"][:, 0].numpy().mean(axis=(2, 3)).reshape(-1) * 255 - POSE_BASE) / POSE_STEP
        want = np.clip(np.floor((ds.frame_indices(i) - 1) / 2 + 0.5), 0, None)
        assert np.array_equal(j, want)


def test_determinism_seed_epoch_index(shards):
    kw = dict(views=VIEWS, split=1, role="train", holdout_fraction=0, **SMALL)
    a, b = MultiViewClips(shards, seed=3, **kw), MultiViewClips(shards, seed=3, **kw)
    b.set_epoch(2)
    b.set_epoch(0)
    for i in (0, 3):
        sa, sb = a[i], b[i]
        for v in VIEWS:
            assert torch.equal(sa[v], sb[v])
        assert torch.equal(a[i]["rgb"], sa["rgb"])  # repeatable in the same process
    a.set_epoch(1)
    assert not torch.equal(a[0]["rgb"], b[0]["rgb"])  # a new epoch, a new draw
    assert not torch.equal(MultiViewClips(shards, seed=4, **kw)[0]["rgb"], b[0]["rgb"])
    np.random.seed(123)
    torch.manual_seed(123)
    x = b[1]["rgb"]
    np.random.seed(456)
    torch.manual_seed(456)
    assert torch.equal(b[1]["rgb"], x)  # global RNGs play no part


def collect(loader) -> dict[int, dict]:
    out = {}
    for batch in loader:
        for j, i in enumerate(batch["index"].tolist()):
            assert i not in out or torch.equal(out[i]["rgb"], batch["rgb"][j])
            out[i] = {k: batch[k][j] for k in batch}
    return out


def assert_same(x: dict, y: dict) -> None:
    assert x.keys() == y.keys()
    for i in x:
        for k in x[i]:
            assert torch.equal(x[i][k], y[i][k]), (i, k)


def test_identical_across_worker_counts(shards):
    ds = MultiViewClips(shards, VIEWS, split=1, role="train", holdout_fraction=0, seed=9, **SMALL)
    runs = []
    for workers in (0, 2):
        loader = make_loader(ds, batch_size=2, workers=workers, shuffle=True, seed=1, epoch=0)
        loader.set_epoch(3)
        order = [int(i) for b in loader for i in b["index"]]
        runs.append((order, collect(loader)))
    assert runs[0][0] == runs[1][0]  # the same shuffled order
    assert sorted(runs[0][0]) == list(range(len(ds)))
    assert_same(runs[0][1], runs[1][1])
    ds.set_epoch(3)
    assert torch.equal(runs[1][1][2]["flow_tvl1"], ds[2]["flow_tvl1"])


def test_identical_under_distributed_rank_split(shards):
    ds = MultiViewClips(shards, VIEWS, split=2, role="train", holdout_fraction=0, seed=2, **SMALL)
    assert len(ds) == 5  # odd: the sampler pads one rank with a repeat
    epoch = 4
    ds.set_epoch(epoch)
    single = {i: ds[i] for i in range(len(ds))}
    union = {}
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=11)
        sampler.set_epoch(epoch)
        union.update(collect(DataLoader(ds, batch_size=2, sampler=sampler, num_workers=0)))
    assert_same(union, single)


def normalised(frames: np.ndarray, kind: str) -> np.ndarray:
    """uint8 (12, h, w, C) -> what the loader returns for it, (4, C, 3, h, w)."""
    scale, offset = V.KINDS[kind].normaliser(frames.shape[-1])
    x = frames.astype(np.float32) * scale + offset
    return x.reshape(4, 3, *x.shape[1:]).transpose(0, 4, 1, 2, 3)


def crops(frames: np.ndarray, kind: str, flip: bool, negate_u: bool = False) -> list[np.ndarray]:
    """Every full-height 40x40 crop of 40x48 frames, normalised, optionally mirrored (and u negated)."""
    out = []
    for x0 in range(W - H + 1):
        c = frames[:, :, x0 : x0 + H]
        if flip:
            c = c[:, :, ::-1].copy()
            if negate_u:
                c[..., 0] = 255 - c[..., 0]
        out.append(normalised(c, kind))
    return out


def matches(x: torch.Tensor, candidates) -> bool:
    return any(np.allclose(x.numpy(), c, atol=1e-5) for c in candidates)


def test_flip_applies_to_rgb_not_flow(shards):
    """crop_scale 1 and aspect 1 make the crop the full-height 40x40 square at a random x, shown at 40 px
    (no resize), and no colour change: rgb must be a mirrored crop, flow an unmirrored one."""
    kw = dict(views=VIEWS, split=1, role="train", holdout_fraction=0, **{**SMALL, "sizes": {"rgb": 40, "flow": 40}})
    still = Augmentation(
        crop_scale=(1, 1), crop_ratio=(1, 1), jitter=(0, 0, 0, 0), p_gray=0, p_flip=1.0, intensity_crop=False
    )
    flipped = MultiViewClips(shards, augmentation=still, **kw)
    flow_too = MultiViewClips(shards, augmentation=Augmentation(**{**still.__dict__, "flip_all_views": True}), **kw)
    for i, v in enumerate(flipped.videos):
        idx = flipped.frame_indices(i)
        rgb = ShardReader(shards["rgb"][v.shard]).read(v.row, idx)
        flow = ShardReader(shards["flow_tvl1"][v.shard]).read(v.row, idx)
        s, t = flipped[i], flow_too[i]
        assert matches(s["rgb"], crops(rgb, "rgb", True)) and not matches(s["rgb"], crops(rgb, "rgb", False))
        assert matches(s["flow_tvl1"], crops(flow, "flow", False))
        assert not matches(s["flow_tvl1"], crops(flow, "flow", True))
        assert torch.equal(s["rgb"], t["rgb"])
        # flip_all_views=True: mirrored and u negated (q -> 255 - q is exactly f -> -f)
        assert matches(t["flow_tvl1"], crops(flow, "flow", True, negate_u=True))
    q = np.arange(256, dtype=np.uint8)
    np.testing.assert_allclose(dequantize(255 - q, BOUND), -dequantize(q, BOUND), atol=1e-5)


def test_flow_normalisation_round_trip(shards):
    ds = MultiViewClips(shards, VIEWS, split=1, role="test", **{**SMALL, "sizes": {"rgb": 32, "flow": 40}})
    assert ds.bounds == {"flow_tvl1": BOUND}
    for i, v in enumerate(ds.videos):
        reader = ShardReader(shards["flow_tvl1"][v.shard])
        q = reader.read(v.row, ds.frame_indices(i))[:, :, 4:44]  # centre 40x40: no resize
        px = ds[i]["flow_tvl1"].numpy() * ds.bounds["flow_tvl1"]  # (N, 2, K, 40, 40)
        want = dequantize(q, BOUND).reshape(4, 3, 40, 40, 2).transpose(0, 4, 1, 2, 3)
        np.testing.assert_allclose(px, want, atol=1e-4)


def test_eval_roles_use_the_deterministic_centre_crop(shards):
    for role in ("val", "test"):
        kw = dict(views=VIEWS, split=1, role=role, holdout_fraction=0.3, **SMALL)
        a, b = MultiViewClips(shards, seed=0, **kw), MultiViewClips(shards, seed=99, **kw)
        b.set_epoch(7)
        assert len(a) > 0
        for i, v in enumerate(a.videos):
            sa, sb = a[i], b[i]
            for view in VIEWS:
                assert torch.equal(sa[view], sb[view])  # seed and epoch play no part
            idx = clip_indices(v.n_frames, 4, 3, 2)  # centre clip
            rgb = ShardReader(shards["rgb"][v.shard]).read(v.row, idx)[:, :, 4:44]  # centre square
            want = np.stack([cv2.resize(f, (32, 32), interpolation=cv2.INTER_LINEAR) for f in rgb]).astype(np.float32)
            want = (want / 255 - np.array(V.IMAGENET_MEAN, np.float32)) / np.array(V.IMAGENET_STD, np.float32)
            want = want.reshape(4, 3, 32, 32, 3).transpose(0, 4, 1, 2, 3)
            np.testing.assert_allclose(sa["rgb"].numpy(), want, atol=1e-5)
            assert np.array_equal(rgb_k(sa["rgb"], v.video_id), idx)


def test_grey_and_jitter_per_frame(shards):
    kw = dict(views=["rgb"], split=1, role="train", holdout_fraction=0, **SMALL)
    mean = np.array(V.IMAGENET_MEAN, np.float32)[None, :, None, None, None]
    std = np.array(V.IMAGENET_STD, np.float32)[None, :, None, None, None]
    for mode in ("channel", "luma"):
        grey = MultiViewClips(shards, augmentation=Augmentation(p_gray=1.0, gray=mode), **kw)
        u8 = (grey[0]["rgb"].numpy() * std + mean) * 255
        assert np.allclose(u8[:, 0], u8[:, 1], atol=1e-3) and np.allclose(u8[:, 1], u8[:, 2], atol=1e-3)
    # brightness only, no flip, full-height square crop: the per-frame brightness factors show as the
    # ratio of each frame's mean to the unaugmented frame's mean, and differ within every block
    bright = Augmentation(crop_scale=(1, 1), crop_ratio=(1, 1), jitter=(0.5, 0, 0, 0), p_gray=0, p_flip=0)
    plain = MultiViewClips(shards, augment=False, **kw)
    colour = MultiViewClips(shards, augmentation=bright, **kw)
    i = [v.video_id for v in plain.videos].index("A/v0")
    u8 = (colour[i]["rgb"].numpy() * std + mean) * 255
    p8 = (plain[i]["rgb"].numpy() * std + mean) * 255
    ratios = u8.mean(axis=(1, 3, 4)) / p8.mean(axis=(1, 3, 4))  # (N, K)
    assert 0.4 < ratios.min() and ratios.max() < 1.6 and np.all(ratios.std(axis=1) > 0.02)
    with pytest.raises(ValueError):
        Augmentation(gray="red")


def test_crops_independent_per_view_unless_shared(shards, monkeypatch):
    boxes = []
    real = reading.crop_into  # the worker's crop copy: one call per view and sample
    monkeypatch.setattr(
        reading, "crop_into", lambda images, inverse, box, out: boxes.append(box) or real(images, inverse, box, out)
    )
    kw = dict(views=VIEWS, split=1, role="train", holdout_fraction=0, **SMALL)
    for shared in (False, True):
        boxes.clear()
        ds = MultiViewClips(shards, augmentation=Augmentation(shared_crop=shared), **kw)
        for i in range(len(ds)):
            ds[i]
        pairs = list(zip(boxes[0::2], boxes[1::2]))  # (rgb box, flow box) per sample; same frame size
        assert all(a == b for a, b in pairs) == shared
        assert len(set(boxes)) > 2  # random crops
        for x0, y0, bw, bh in boxes:
            assert 0 <= x0 <= W - bw and 0 <= y0 <= H - bh and bw * bh >= 0.5 * 40 * 40 * 0.9


def test_pickles_light_and_reads_the_same(shards):
    ds = MultiViewClips(shards, VIEWS, split=1, role="train", holdout_fraction=0, seed=4, **SMALL)
    want = ds[1]
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000
    clone = pickle.loads(blob)
    got = clone[1]
    for v in VIEWS:
        assert torch.equal(got[v], want[v])
    with pytest.raises(AttributeError, match="dropped"):
        _ = clone.videos


# ------------------------------------------------------------------ dense test windows


def test_dense_windows_count_overlap_and_coverage():
    # 8 blocks of 5 frames at stride 3, half overlap (4 blocks): a video of 150 frames = 50 strided
    # frames = 10 complete blocks -> windows at blocks 0 and 2 (the last one ends on the last block)
    w = dense_windows(150, 8, 5, 3)
    assert w.shape == (2, 40)
    assert np.array_equal(w[0], 3 * np.arange(40)) and np.array_equal(w[1], 3 * (10 + np.arange(40)))
    for n in range(118, 400, 7):  # 118 = (40 - 1) * 3 + 1: the shortest video with a full window
        w = dense_windows(n, 8, 5, 3)
        blocks = len(range(0, n, 3)) // 5
        starts = w[:, 0] // 15  # block index of each window's first frame
        assert np.all(np.diff(w, axis=1) == 3) and w.max() < n
        assert starts[0] == 0 and starts[-1] == blocks - 8  # the whole video is covered
        assert np.all(np.diff(starts)[:-1] == 4) and 1 <= np.diff(starts)[-1] <= 4 if len(starts) > 1 else True
        regular = (blocks - 8) // 4 + 1
        assert len(w) == regular + ((blocks - 8) % 4 != 0)
    # window_stride = N: no overlap; 1: every block start
    assert len(dense_windows(16 * 15, 8, 5, 3, window_stride=8)) == 2
    assert len(dense_windows(16 * 15, 8, 5, 3, window_stride=1)) == 9
    # too short for one window: exactly one, the centre clip of clip_indices (never dropped)
    for n in (1, 7, 40, 117):
        w = dense_windows(n, 8, 5, 3)
        assert w.shape == (1, 40) and np.array_equal(w[0], clip_indices(n, 8, 5, 3)) and w.max() < n


def test_dense_clips_score_every_video_with_the_right_frames(shards):
    kw = dict(
        views=VIEWS, split=2, holdout_fraction=0.0, num_blocks=2, block_len=3, stride=2, sizes={"rgb": 32, "flow": 24}
    )  # window = 2 blocks x 3 frames at stride 2 (11 frames)
    test = DenseClips(shards, role="test", window_stride=1, extra_blocks=5, **kw)
    # split 2's test role: A/v0 (36 frames) and C/v6 (25 frames); none dropped
    assert ids(test) == ["A/v0", "C/v6"]
    for i, vid in enumerate(ids(test)):
        item = test[i]
        n = test.videos[i].n_frames
        want = dense_windows(n, 2, 3, 2, window_stride=1)
        assert int(item["windows"]) == len(want)
        assert item["rgb"].shape == (len(want), 2, 3, 3, 32, 32) and item["flow_tvl1"].shape == (
            len(want),
            2,
            2,
            3,
            24,
            24,
        )
        for k in range(len(want)):
            assert np.array_equal(rgb_k(item["rgb"][k], vid), want[k])
            assert np.array_equal(flow_k(item["flow_tvl1"][k]), want[k])
        # the extra blocks spread over the whole video (alignment): clip_indices of 5 blocks
        assert item["blocks/rgb"].shape == (5, 3, 3, 32, 32)
        assert np.array_equal(flow_k(item["blocks/flow_tvl1"]), clip_indices(n, 5, 3, 2))
    # the whole training role of split 1, short videos included (8..36 frames): every ok video scored
    train = DenseClips(shards, role="train", **{**kw, "split": 1})
    assert len(train) == 6 and all(int(train[i]["windows"]) >= 1 for i in range(len(train)))
