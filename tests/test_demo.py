"""Tests of the demo dataset generator (cocon.sources.demo)."""

from __future__ import annotations

import builtins
import os
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from cocon.config import ConfigError, load_config
from cocon.sources import demo

from conftest import run_cocon

SMALL = {
    "classes": 3,
    "groups_per_class": 3,
    "clips_per_group": 2,
    "test_groups": 1,
    "frames": 12,
    "width": 48,
    "height": 32,
}


def small_cfg(out: Path, seed: int = 0, **demo_overrides) -> dict:
    return load_config(overrides={"output_dir": str(out), "seed": seed, "demo": {**SMALL, **demo_overrides}})


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return fh.read().splitlines()


def decode(path: str) -> np.ndarray:
    """All frames of a video, (T, H, W, 3) uint8 BGR."""
    cap = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- plan and files


def test_plan_does_not_touch_disk(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError(f"plan() touched the disk: {args}")

    cfg = small_cfg(tmp_path / "not_there")
    with monkeypatch.context() as m:
        for name in ("stat", "lstat", "listdir", "scandir", "makedirs", "mkdir", "replace", "remove"):
            m.setattr(os, name, forbidden)
        m.setattr(builtins, "open", forbidden)
        records = demo.plan(cfg)
    assert not (tmp_path / "not_there").exists()
    assert len(records) == 3 * 3 * 2
    assert [r.video_id for r in records] == sorted(r.video_id for r in records)
    root = demo.video_root(cfg)
    assert root == os.path.join(tmp_path / "not_there", "demo", "videos")
    assert demo.annotation_dir(cfg) == os.path.join(tmp_path / "not_there", "demo", "annotations")
    for r in records:
        m = re.fullmatch(r"([A-Za-z]+)/v_\1_g(\d\d)_c(\d\d)", r.video_id)
        assert m, r.video_id
        assert r.label == m.group(1) == demo.CLASSES[r.label_index]
        assert r.group == f"{r.label}_g{m.group(2)}"
        assert r.path == os.path.join(root, r.video_id + ".avi") and os.path.isabs(r.path)
        assert r.splits == {"1": "test" if int(m.group(2)) == 3 else "train"}


def test_plan_paths_stay_relative_for_relative_output_dir():
    """Relative to the working directory, so a run's bytes do not depend on where it runs."""
    cfg = load_config(overrides={"output_dir": "results"})
    records = demo.plan(cfg)
    assert len(records) == 6 * 5 * 2
    assert records[0].path == os.path.join("results", "demo", "videos", records[0].video_id + ".avi")
    assert [r.label for r in records if r.video_id.endswith("_g01_c01")] == sorted(demo.CLASSES[:6])


def test_generate_writes_the_plan(tmp_path):
    cfg = small_cfg(tmp_path)
    records = demo.plan(cfg)
    demo.generate(cfg)
    ann = Path(demo.annotation_dir(cfg))
    videos = sorted(str(p) for p in Path(demo.video_root(cfg)).rglob("*") if p.is_file())
    assert videos == sorted(r.path for r in records)
    assert sorted(os.listdir(ann)) == ["classInd.txt", "testlist01.txt", "trainlist01.txt"]
    assert not list(tmp_path.rglob("*partial*"))

    assert read_lines(ann / "classInd.txt") == [f"{i + 1} {c}" for i, c in enumerate(demo.CLASSES[:3])]
    class_index = {c: int(i) for i, c in (line.split() for line in read_lines(ann / "classInd.txt"))}
    train = {}
    for line in read_lines(ann / "trainlist01.txt"):
        path, index = line.split()
        train[path] = int(index)
    test = set(read_lines(ann / "testlist01.txt"))
    assert not set(train) & test
    by_file = {r.video_id + ".avi": r for r in records}
    assert set(train) | test == set(by_file)
    for path, index in train.items():
        r = by_file[path]
        assert r.role(1) == "train" and index == r.label_index + 1 == class_index[r.label]
        assert path.split("/")[0] == r.label
    assert all(by_file[p].role(1) == "test" for p in test)


def test_splits_groups_disjoint_and_every_class_in_both():
    cfg = load_config()
    records = demo.plan(cfg)
    train = {r.group for r in records if r.role(1) == "train"}
    test = {r.group for r in records if r.role(1) == "test"}
    assert train and test and not train & test
    for c in demo.CLASSES[:6]:
        roles = [r.role(1) for r in records if r.label == c]
        assert roles.count("train") == 3 * 2 and roles.count("test") == 2 * 2
    groups = {}
    for r in records:
        groups.setdefault(r.group, set()).add((r.label, r.role(1)))
    assert all(len(v) == 1 for v in groups.values())  # a group has one class and one role


def test_bad_sizes_rejected(tmp_path):
    with pytest.raises(ConfigError, match="demo.width"):
        demo.plan(small_cfg(tmp_path, width=49))
    with pytest.raises(ConfigError, match="demo.groups_per_class"):
        demo.plan(small_cfg(tmp_path, groups_per_class=100))


# ---------------------------------------------------------------------------- determinism, decoding


def test_byte_identical_and_seed_dependent(tmp_path):
    trees = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        demo.generate(small_cfg(tmp_path / name, seed=seed))
        trees.append(tree_bytes(tmp_path / name))
    a, b, c = trees
    assert len(a) == 3 * 3 * 2 + 3
    assert a == b
    assert a.keys() == c.keys()
    for key in a:
        if key.endswith(".avi"):
            assert a[key] != c[key], key
        else:
            assert a[key] == c[key], key


def test_default_config_decodes_and_is_fast(tmp_path):
    cfg = load_config(overrides={"output_dir": str(tmp_path)})
    start = time.perf_counter()
    demo.generate(cfg)
    elapsed = time.perf_counter() - start
    assert elapsed < 30, f"default demo took {elapsed:.1f} s"
    d = cfg["demo"]
    for r in demo.plan(cfg):
        frames = decode(r.path)
        assert frames.shape == (d["frames"], d["height"], d["width"], 3), r.video_id
        cap = cv2.VideoCapture(r.path)
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(d["fps"])
        cap.release()


def test_decoded_frames_match_render(tmp_path):
    cfg = small_cfg(tmp_path)
    demo.generate(cfg)
    r = demo.plan(cfg)[0]
    want = demo.render_clip(r.label, r.label_index * demo.GROUP_STRIDE + 1, 1, 0, 12, 48, 32, 25)
    assert r.video_id.endswith("_g01_c01")
    got = decode(r.path)[..., ::-1].astype(np.float64)  # BGR -> RGB
    assert got.shape == want.shape
    assert np.abs(got - want).mean() < 12  # lossy codec, same picture


def test_render_clip_shape_and_determinism():
    a = demo.render_clip("Squat", 7, 1, seed=1, frames=10, width=64, height=48)
    assert a.shape == (10, 48, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, demo.render_clip("Squat", 7, 1, seed=1, frames=10, width=64, height=48))
    assert not np.array_equal(a, demo.render_clip("Squat", 7, 2, seed=1, frames=10, width=64, height=48))
    assert np.abs(np.diff(a.astype(int), axis=0)).sum() > 0  # it moves
    with pytest.raises(ValueError, match="unknown demo class"):
        demo.render_clip("Juggle", 1, 1)


# ---------------------------------------------------------------------------- the premise


def appearance_features(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean RGB (3,) and a 4x4x4 RGB histogram (64,) over all pixels of all frames."""
    pixels = frames.reshape(-1, 3)
    q = pixels.astype(np.int64) // 64
    hist = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64) / len(pixels)
    return pixels.mean(0), hist


def motion_feature(frames: np.ndarray) -> np.ndarray:
    """(25,): 4x4 grid of mean |frame difference| inside the box of the moving pixels (sums to 1),
    the temporal spectrum of difference energy in 8 bands (sums to 1), log aspect of the box."""
    grey = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    diff = np.abs(np.diff(grey, axis=0))  # (T-1, H, W)
    ys, xs = np.nonzero(diff.max(0) > 25)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    grid = cv2.resize(diff.mean(0)[y0:y1, x0:x1], (4, 4), interpolation=cv2.INTER_AREA).ravel()
    energy = diff.reshape(len(diff), -1).mean(1)
    spectrum = np.abs(np.fft.rfft(energy - energy.mean()))[1:]
    bands = np.array([b.sum() for b in np.array_split(spectrum / spectrum.sum(), 8)])
    return np.concatenate([grid / grid.sum(), bands, [np.log((x1 - x0) / (y1 - y0))]])


def leave_one_group_out_accuracy(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """Nearest-centroid accuracy on standardised features, each group held out in turn."""
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    classes = np.unique(y)
    correct = 0
    for g in np.unique(groups):
        train, test = groups != g, groups == g
        centroids = np.stack([x[train & (y == c)].mean(0) for c in classes])
        dist = ((x[test][:, None, :] - centroids[None]) ** 2).sum(-1)
        correct += int((classes[dist.argmin(1)] == y[test]).sum())
    return correct / len(y)


def test_appearance_is_drawn_without_the_class():
    """Same (group, clip) rendered as every class: the pictures differ only where the figures are,
    and the class moves the mean colour by far less than the group does."""
    means = np.zeros((4, len(demo.CLASSES), 3))
    for g in range(4):
        clips = [demo.render_clip(name, 1000 + g, 1, seed=2, frames=16) for name in demo.CLASSES]
        for c, frames in enumerate(clips):
            means[g, c] = frames.reshape(-1, 3).mean(0)
            same = (frames == clips[0]).all(-1).mean()
            assert same > 0.7, (g, demo.CLASSES[c], same)  # the background and its jitter are shared
    across_classes = means.std(1).max()
    across_groups = means.mean(1).std(0).min()
    assert across_classes < 2.0 and across_groups > 20.0, (across_classes, across_groups)


def premise_accuracies(classes: int, groups_per_class: int, **render) -> list[float]:
    """Leave-one-group-out accuracy of mean colour, colour histogram and motion features over
    `classes` x `groups_per_class` groups x 2 clips rendered with demo.render_clip(..., seed=0, **render)."""
    mean_rgb, hist, motion, labels, groups = [], [], [], [], []
    for ci, name in enumerate(demo.CLASSES[:classes]):
        for g in range(1, groups_per_class + 1):
            group = ci * demo.GROUP_STRIDE + g
            for clip in (1, 2):
                frames = demo.render_clip(name, group, clip, seed=0, **render)
                m, h = appearance_features(frames)
                mean_rgb.append(m)
                hist.append(h)
                motion.append(motion_feature(frames))
                labels.append(ci)
                groups.append(group)
    y, groups = np.array(labels), np.array(groups)
    return [leave_one_group_out_accuracy(np.array(x), y, groups) for x in (mean_rgb, hist, motion)]


def test_premise_motion_not_appearance_defines_the_class():
    """All 8 classes x 6 groups x 2 clips (seed 0, default size): chance is 1/8 = 0.125.
    Measured when written: mean colour 0.229, colour histogram 0.135, motion 0.698."""
    acc_mean, acc_hist, acc_motion = premise_accuracies(len(demo.CLASSES), 6)
    print(f"premise: mean colour {acc_mean:.3f}, colour histogram {acc_hist:.3f}, motion {acc_motion:.3f}")
    assert acc_mean < 0.35 and acc_hist < 0.35
    assert acc_motion > 0.55
    assert acc_motion > max(acc_mean, acc_hist) + 0.3


def test_premise_holds_for_the_configured_demo():
    """The demo as config.yaml configures it (the claim's data: bold figures on quiet backgrounds, 64x48):
    6 classes x 8 groups x 2 clips, chance 1/6. Measured when written: mean colour 0.125, colour
    histogram 0.146, motion 0.823 (seed 0); 0.271, 0.156, 0.865 (seed 1)."""
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())["demo"]
    style = {k: cfg[k] for k in demo.STYLE}
    size = {"frames": cfg["frames"], "width": cfg["width"], "height": cfg["height"]}
    accs = premise_accuracies(cfg["classes"], 8, **size, style=style)
    print(f"premise (config.yaml): mean colour {accs[0]:.3f}, colour histogram {accs[1]:.3f}, motion {accs[2]:.3f}")
    assert accs[0] < 0.35 and accs[1] < 0.35
    assert accs[2] > 0.6 and accs[2] > max(accs[:2]) + 0.35


# ---------------------------------------------------------------------------- CLI


def test_cli(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "seed": 5, "demo": {**SMALL, "classes": 2}}))
    proc = run_cocon("demo", "--config", config, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1
    assert "12 videos" in proc.stdout
    cfg = load_config(config)
    assert all(os.path.isfile(r.path) for r in demo.plan(cfg))
    assert len(read_lines(os.path.join(demo.annotation_dir(cfg), "trainlist01.txt"))) == 2 * 2 * 2
