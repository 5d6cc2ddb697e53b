"""Tests of the uint8 loader path (cocon.data.augment): workers hand uint8 canvases and the sample's
augmentation parameters, `Finish` does the float work per batch on any device. Checked here on the CPU:
the float samples are the finished uint8 samples; the finished float equals an independent reference
(OpenCV float resize, colorsys hue, NumPy float64 grey/jitter, the view kind's normalisation); the
parameters come from the seeded generators (the same for any worker count); the engine's device path
gives the batches of the CPU path; offsets are read once, when the dataset is built."""

from __future__ import annotations

import colorsys
import dataclasses
import zlib

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from cocon import views as V
from cocon.data import augment as A
from cocon.data import reading
from cocon.data.clips import Augmentation, MultiViewClips, discover, make_loader
from cocon.data.shards import ShardReader, ShardWriter, encode_frames
from cocon.sources.records import VideoRecord

from conftest import tiny_training

H, W, T = 40, 48, 20
VIEWS = ["rgb", "flow_tvl1"]
SMALL = dict(num_blocks=3, block_len=2, stride=2, sizes={"rgb": 32, "flow": 24})  # 6 frames per clip
ENC = {"rgb": {"codec": "jpeg", "quality": 90}, "flow_tvl1": {"codec": "png", "level": 1}}


def colourful(seed: int, channels: int, n: int = T) -> np.ndarray:
    """Smooth, strongly coloured moving texture, uint8 (n, H, W, channels)."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((H, W + n, channels), dtype=np.float32), (0, 0), 2.0).reshape(H, W + n, channels)
    base = (base - base.min()) / (base.max() - base.min())
    return np.stack([np.rint(255 * base[:, k : k + W]) for k in range(n)]).astype(np.uint8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("augment")
    for view, c in (("rgb", 3), ("flow_tvl1", 2)):
        attrs = {"params": {"bound": 20.0} if view.startswith("flow") else {}}
        with ShardWriter(root / "shards" / view / "00000.h5", view, "00000", attrs, ENC[view]) as w:
            for i in range(5):
                rec = VideoRecord(f"c/v{i}", f"v{i}.avi", "c", 0, f"g{i}", {"1": "train"})
                w.add_video(rec, encode_frames(colourful(10 * i + c, c), ENC[view]), {"fps": 25.0})
    return discover(root, VIEWS)


def dataset(shards, **kw) -> MultiViewClips:
    return MultiViewClips(shards, **{"views": VIEWS, "holdout_fraction": 0, "seed": 7, **SMALL, **kw})


# ------------------------------------------------------------------ the reference (independent code)


def ref_grey(x: np.ndarray) -> np.ndarray:
    return x @ np.array(A.GREY_WEIGHTS)


def ref_hue(x: np.ndarray, f: float) -> np.ndarray:
    """colorsys (Python's HSV) per pixel: hue + f turns, wrapped."""
    out = np.empty_like(x)
    for p in np.ndindex(x.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*(x[p] / 255.0))
        out[p] = np.array(colorsys.hsv_to_rgb((h + f) % 1.0, s, v)) * 255.0
    return out


def ref_jitter(x: np.ndarray, op: int, f: float) -> np.ndarray:
    if op == 0:
        return np.clip(x * f, 0, 255)
    if op == 1:
        return np.clip(f * x + (1 - f) * ref_grey(x).mean(), 0, 255)
    if op == 2:
        return np.clip(f * x + (1 - f) * ref_grey(x)[..., None], 0, 255)
    return ref_hue(x, f)


def reference(ds: MultiViewClips, i: int, view: str) -> np.ndarray:
    """Sample i of `view` from the docs' definitions, float64: the frames read by ShardReader, the box of
    the sample's generator, cv2.resize (INTER_LINEAR on float32; on uint8 for the boxes the worker
    resizes: larger than the canvas, or shrinking by 1.5x or more both ways, then with INTER_AREA), flip, grey and jitter with the drawn
    parameters (draw_colour: same generator, same order), the kind's normalisation -> (N, C, K, S, S)."""
    v = ds.videos[i]
    frames = ShardReader(ds._readers[view][v.shard].path).read(v.row, ds.frame_indices(i))
    size, aug = ds.sizes[view], ds.augmentation
    rng = np.random.default_rng([ds.seed, ds.epoch, i, 1, zlib.crc32(view.encode())])
    area, ratio, ux, uy, flip = A.draw_box(rng, aug)
    x0, y0, bw, bh = A.crop_box(H, W, area, ratio, ux, uy)
    out = []
    colour = A.draw_colour(rng, len(frames), aug) if view == "rgb" else None
    for t, f in enumerate(frames):
        crop = f[y0 : y0 + bh, x0 : x0 + bw]
        hc, wc = ds._canvas[view]
        if A.area_shrink(bh, bw, size) or bh > hc or bw > wc:  # resized by the worker: OpenCV on uint8
            interp = cv2.INTER_AREA if A.area_shrink(bh, bw, size) else cv2.INTER_LINEAR
            x = cv2.resize(crop, (size, size), interpolation=interp)
        else:
            x = cv2.resize(crop.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        x = x.reshape(size, size, -1).astype(np.float64)
        if flip and view == "rgb":
            x = x[:, ::-1]
        if colour is not None:
            g = colour["grey"][t]
            if g >= 0:
                x = np.repeat((ref_grey(x) if g == A.LUMA else x[..., g])[..., None], 3, axis=2)
            for op in colour["order"][t]:
                if colour["jitter"][t, op] != A.IDENTITY[op]:
                    x = ref_jitter(x, op, float(colour["jitter"][t, op]))
        out.append(x)
    scale, offset = V.kind_of(view).normaliser(frames.shape[-1])
    x = np.stack(out) * scale + offset
    return x.reshape(ds.num_blocks, ds.block_len, size, size, -1).transpose(0, 4, 1, 2, 3)


# ------------------------------------------------------------------ tests


def test_float_samples_are_the_finished_uint8_samples(shards):
    """dataset[i] (output "float") = Finish applied on the CPU to the uint8 sample, batched or alone."""
    fl, u8 = dataset(shards), dataset(shards, output="uint8")
    s = u8[1]
    assert s["rgb"].dtype == torch.uint8 and s["rgb"].shape == (6, *u8._canvas["rgb"], 3)
    assert s["flow_tvl1"].shape == (6, *u8._canvas["flow_tvl1"], 2)
    assert {"aug/rgb/grey", "aug/rgb/jitter", "aug/rgb/order"} <= set(s) and "aug/flow_tvl1/grey" not in s
    batch = default_collate([u8[i] for i in range(4)])
    for contiguous in (True, False):
        x = u8.finisher()(batch, "cpu", contiguous=contiguous)
        for v in VIEWS:
            assert x[v].shape == (4, 3, V.channels(v), 2, u8.sizes[v], u8.sizes[v])
            assert x[v].is_contiguous() == contiguous
            if not contiguous:  # channels-last: C innermost, what the engine's channels_last_3d makes
                assert x[v].movedim(2, -1).is_contiguous()
            want = torch.stack([fl[i][v] for i in range(4)])
            torch.testing.assert_close(x[v], want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="output"):
        dataset(shards, output="half")


def test_finish_equals_the_reference_implementation(shards):
    """The finished float (CPU, one batch) = the float64 reference of the documented semantics, within
    float rounding; both resampling implementations (CUDA's gather, the CPU's rows) give the same."""
    seen = {"grey": set(), "ops": torch.zeros(4, dtype=torch.bool), "flip": set()}
    # the random-area crop of every view (intensity_crop off: the reference draws that crop; the intensity
    # crop of flow has its own test, tests/test_intensity_crop.py)
    plain = dict(intensity_crop=False)
    for aug in (
        Augmentation(**plain),
        Augmentation(gray="luma", p_flip=1.0, **plain),
        dataclasses.replace(A.FINETUNE_AUGMENTATION, **plain),
    ):
        ds = dataset(shards, augmentation=aug, output="uint8")
        ds.set_epoch(2)
        n = len(ds)
        batch = default_collate([ds[i] for i in range(n)])
        x = ds.finisher()(batch, "cpu", contiguous=True)
        for v in VIEWS:
            for i in range(n):
                np.testing.assert_allclose(x[v][i].numpy(), reference(ds, i, v), atol=2e-4, rtol=0)
            args = batch[v], batch[f"aug/{v}/index"], batch[f"aug/{v}/weight"]
            assert torch.equal(A.resample(*args, impl="gather"), A.resample(*args, impl="rows"))
        seen["grey"] |= set(batch["aug/rgb/grey"].flatten().tolist())
        seen["ops"] |= (batch["aug/rgb/jitter"] != torch.tensor(A.IDENTITY)).flatten(0, 1).any(0)
        seen["flip"] |= set(batch["aug/rgb/flip"].tolist())
    # what was compared covers every part: no grey, each channel, luma, all four jitter operations, flips
    assert seen["grey"] == {-1, 0, 1, 2, 3} and bool(seen["ops"].all()) and seen["flip"] == {False, True}


def test_without_colour_the_finished_float_is_the_old_normalisation_exactly(shards):
    """No colour change and a crop the size of the output (no resampling): the finished float is exactly
    uint8 * scale + offset of the crop (the loader's normalisation before the uint8 path), flipped."""
    still = Augmentation(
        crop_scale=(1, 1),
        crop_ratio=(1, 1),
        jitter=(0, 0, 0, 0),
        p_gray=0,
        p_flip=1.0,
        flip_all_views=True,
        intensity_crop=False,
    )
    ds = dataset(shards, augmentation=still, sizes={"rgb": 40, "flow": 40})
    for i in range(len(ds)):
        s = ds.sample(i)
        v = ds.videos[i]
        frames = {view: ShardReader(ds._readers[view][v.shard].path).read(v.row, ds.frame_indices(i)) for view in VIEWS}
        got = ds[i]
        for view in VIEWS:
            canvas = s[view].numpy()[:, :40, :40]  # the crop, unflipped, at the canvas origin
            x0 = next(a for a in range(W - H + 1) if np.array_equal(canvas, frames[view][:, :, a : a + 40]))
            crop = frames[view][:, :, x0 : x0 + 40][:, :, ::-1].copy()
            if view == "flow_tvl1":
                crop[..., 0] = 255 - crop[..., 0]
            scale, offset = ds._norm[view]
            want = (crop.astype(np.float32) * scale + offset).reshape(3, 2, 40, 40, -1).transpose(0, 4, 1, 2, 3)
            assert torch.equal(got[view], torch.from_numpy(np.ascontiguousarray(want)))


def test_parameters_are_drawn_from_the_seeded_generator(shards):
    """Crop box, flip and colour parameters of sample i come from default_rng([seed, epoch, i, 1,
    crc32(view)]) in the documented order, and the uint8 batches are identical for 0 and 2 workers."""
    ds = dataset(shards, output="uint8")
    ds.set_epoch(3)
    for i in range(len(ds)):
        s = ds[i]
        rng = np.random.default_rng([7, 3, i, 1, zlib.crc32(b"rgb")])
        area, ratio, ux, uy, flip = A.draw_box(rng, ds.augmentation)
        x0, y0, bw, bh = A.crop_box(H, W, area, ratio, ux, uy)
        want = A.draw_colour(rng, 6, ds.augmentation)
        for k in ("grey", "jitter", "order"):
            assert np.array_equal(s[f"aug/rgb/{k}"].numpy(), want[k])
        index, weight = A.geometry(bh, bw, 32, flip)
        assert np.array_equal(s["aug/rgb/index"].numpy(), index) and np.array_equal(s["aug/rgb/weight"].numpy(), weight)
        assert bool(s["aug/rgb/flip"]) == flip
        assert not s["aug/flow_tvl1/flip"]  # flow is never flipped by default
    runs = []
    for workers in (0, 2):
        loader = make_loader(ds, batch_size=2, workers=workers, shuffle=True, seed=1, epoch=3)
        runs.append({int(i): {k: b[k][j] for k in b} for b in loader for j, i in enumerate(b["index"])})
    assert runs[0].keys() == runs[1].keys() == set(range(len(ds)))
    for i in runs[0]:
        for k in runs[0][i]:
            assert torch.equal(runs[0][i][k], runs[1][i][k]), (i, k)


def test_geometry_is_opencv_linear_and_exact_at_scale_one():
    y0, y1, w = A.resample_axis(7, 7)
    assert np.array_equal(y0, np.arange(7)) and not w.any()  # a + 0 * (b - a) = a
    src = np.random.default_rng(0).random((13, 9)).astype(np.float32) * 255
    for size in (4, 9, 20):
        r0, r1, wy = A.resample_axis(13, size)
        c0, c1, wx = A.resample_axis(9, size)
        rows = src[r0] + wy[:, None].astype(np.float64) * (src[r1] - src[r0])
        ours = rows[:, c0] + wx[None] * (rows[:, c1] - rows[:, c0])
        np.testing.assert_allclose(ours, cv2.resize(src, (size, size), interpolation=cv2.INTER_LINEAR), atol=1e-3)


def test_canvas_holds_every_box_and_large_shrinks_are_resized_by_the_worker(shards):
    ds = dataset(shards, output="uint8")
    assert ds._canvas["rgb"] == (40, 46)  # 40 * sqrt(4/3) = 46.2 wide at most; at most the frame's 40 high
    small = dataset(shards, output="uint8", sizes={"rgb": 16, "flow": 16})  # boxes >= 1.5x the output
    s = small[0]
    assert small._canvas["rgb"] == (24, 24)  # capped at 1.5 x 16, the worker resizes what does not fit
    assert s["rgb"].shape[1:3] == (24, 24)
    fl = dataset(shards, sizes={"rgb": 16, "flow": 16})
    batch = default_collate([s])
    torch.testing.assert_close(small.finisher()(batch, contiguous=True)["rgb"][0], fl[0]["rgb"], atol=1e-5, rtol=0)
    assert dataset(shards, augment=False, output="uint8")._canvas == {"rgb": (32, 32), "flow_tvl1": (24, 24)}


def test_crop_resize_takes_any_number_of_channels():
    """Pose heatmaps have 17 channels; OpenCV's area resize takes at most 4: a large shrink of a 17-channel
    clip equals each channel resized alone (this crashed the four-view setting's pose loader)."""
    frames = np.random.default_rng(0).integers(0, 256, (2, 60, 80, 17), dtype=np.uint8)
    box = (5, 3, 70, 54)
    for size in (32, 48):  # area (70 x 54 -> 32 shrinks by >= 1.5x), then bilinear
        out = reading.crop_resize(frames, box, size)
        assert out.shape == (2, size, size, 17) and out.dtype == np.uint8
        crop = frames[:, 3:57, 5:75]
        interp = cv2.INTER_AREA if A.area_shrink(54, 70, size) else cv2.INTER_LINEAR
        for ch in (0, 5, 16):
            np.testing.assert_array_equal(
                out[1, ..., ch], cv2.resize(crop[1, ..., ch], (size, size), interpolation=interp)
            )


def test_offsets_are_read_once_when_the_dataset_is_built(shards, monkeypatch):
    calls = []
    real = reading.read_offsets
    monkeypatch.setattr(reading, "read_offsets", lambda path, rows: calls.append(path) or real(path, rows))
    ds = dataset(shards)
    assert calls == [ds._readers["rgb"][0].path, ds._readers["flow_tvl1"][0].path]  # one call per shard and view

    def no_lookup(*a):
        raise AssertionError("per-sample /offsets lookup")

    monkeypatch.setattr(reading.ClipReader, "_offsets", no_lookup)
    for i in range(len(ds)):
        ds[i]


def test_engine_device_path_gives_the_cpu_batches(shards, tmp_path):
    """Engine(device_augment=True) on the CPU: uint8 batches finished in _step's place equal the float
    batches the workers make without it."""
    from cocon.config import load_config
    from cocon.train.engine import Engine
    from cocon.train.methods import get_method

    root = shards["rgb"][0].parents[2]
    cfg = load_config(overrides={"output_dir": str(root), **tiny_training(train={"views": VIEWS})})
    batches = {}
    for dev in (False, True):
        e = Engine(get_method("cocon")(cfg, VIEWS, {}), tmp_path / str(dev), device_augment=dev)
        e.setup()
        assert e.device_augment == dev and e.train_set.output == ("uint8" if dev else "float")
        b = next(iter(e.train_loader))
        batches[dev] = e.finish(b, e.device, contiguous=True) if dev else {v: b[v] for v in VIEWS}
    for v in VIEWS:
        torch.testing.assert_close(batches[True][v], batches[False][v], atol=1e-5, rtol=0)
