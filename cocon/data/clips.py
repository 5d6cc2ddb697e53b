"""Training data loader: multi-view clips read from the HDF5 shards. Spec: docs/loader.md.

    shards = discover("results", ["rgb", "flow_tvl1"])          # {view: [path, ...]}
    train = MultiViewClips(shards, split=1, role="train", holdout_fraction=0.1)
    loader = make_loader(train, batch_size=16, workers=8, shuffle=True, seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:     # batch["rgb"]: float32 (B, N, 3, K, H, W); "label", "index", "group": int64 (B,)
            ...

A sample is one clip of N blocks of K frames (default 8 x 5, one frame in every 3), read at the SAME
frame indices in every view. Its content depends only on (seed, epoch, index): every random draw comes
from a NumPy generator seeded with that triple (never from a global RNG), so the samples are the same
for any number of workers, processes or DistributedSampler ranks.

Videos usable for training are those whose status is "ok" in every requested view; their role comes
from the `splits` of the shard index and the configured split. The validation subset ("val") is held
out from the training role (never from the test split), whole groups at a time (`holdout`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cocon import views as V
from cocon.data.shards import ShardReader
from cocon.sources.records import VideoRecord

__all__ = [
    "ClipsError", "Video", "Augmentation", "MultiViewClips", "DenseClips", "ClipLoader", "dense_windows",
    "discover", "video_table", "holdout", "group_id", "clip_indices", "frame_map", "view_frame_indices",
    "make_loader",
]  # fmt: skip

ROLES = ("train", "val", "test")

# Root attributes through which a view computed on a frame stride (pose, seg) says which rgb frame its
# index j holds: rgb frame FRAME_OFFSET + j * FRAME_STRIDE. Absent = 1 and 0 (rgb, flow).
FRAME_STRIDE_ATTR = "frame_stride"
FRAME_OFFSET_ATTR = "frame_offset"


class ClipsError(ValueError):
    """Shards that cannot be combined into a multi-view dataset (missing shards, disagreeing rows)."""


# ------------------------------------------------------------------ views and shards


def discover(output_dir: str | Path, views: Sequence[str]) -> dict[str, list[Path]]:
    """Shard files `<output_dir>/shards/<view>/*.h5` of each view, sorted by name. Every view must have
    the same shard names; the error lists the missing ones per view."""
    if not views:
        raise ClipsError("no views requested")
    root = Path(output_dir) / "shards"
    found = {v: sorted((root / v).glob("*.h5")) for v in views}
    empty = [v for v in views if not found[v]]
    if empty:
        raise ClipsError(f"no shards for view(s) {', '.join(empty)} under {root}")
    names = {v: {p.stem for p in found[v]} for v in views}
    every = set().union(*names.values())
    missing = {v: sorted(every - names[v]) for v in views if every - names[v]}
    if missing:
        lines = "; ".join(f"{v} lacks {', '.join(m)}" for v, m in missing.items())
        raise ClipsError(f"views disagree on the shards under {root}: {lines}")
    return found


def frame_map(attrs: dict) -> tuple[int, int]:
    """(stride, offset) of a view from its shard's root attributes: the view's index j holds rgb frame
    offset + j * stride. rgb and flow: (1, 0). The one place where a strided view (pose, seg) plugs in."""
    stride = int(attrs.get(FRAME_STRIDE_ATTR, 1))
    offset = int(attrs.get(FRAME_OFFSET_ATTR, 0))
    if stride < 1 or offset < 0:
        raise ClipsError(f"bad frame map: {FRAME_STRIDE_ATTR}={stride}, {FRAME_OFFSET_ATTR}={offset}")
    return stride, offset


def view_frame_indices(rgb_indices: np.ndarray, n_frames: int, stride: int = 1, offset: int = 0) -> np.ndarray:
    """rgb frame indices -> the view's own indices: the nearest stored frame (ties to the later one),
    clipped to 0..n_frames-1."""
    idx = np.asarray(rgb_indices, dtype=np.int64)
    if stride == 1 and offset == 0:
        return np.minimum(idx, n_frames - 1)
    own = np.floor((idx - offset) / stride + 0.5).astype(np.int64)
    return np.clip(own, 0, n_frames - 1)


def _rgb_length(n_frames: int, stride: int, offset: int) -> int:
    """Number of rgb frames a view of n_frames stored frames covers."""
    return offset + (n_frames - 1) * stride + 1


# ------------------------------------------------------------------ video table


@dataclass(frozen=True)
class Video:
    """One video usable for training: status ok in every requested view.

    shard: position in the shard lists; row: row in every view's shard; n_frames: length in rgb frames
    (the minimum over the views, each mapped through `frame_map`)."""

    video_id: str
    label: str
    label_index: int
    group: str
    splits: dict = field(hash=False, compare=True)
    shard: int = 0
    shard_name: str = ""
    row: int = 0
    n_frames: int = 0

    def role(self, split: str | int) -> str:
        return self.splits.get(str(split), "unused")


class _SlimIndex:
    """Stand-in for ShardReader.index holding only what ShardReader.read needs, as NumPy columns, so a
    reader pickles into a DataLoader worker at ~20 bytes per video instead of a dict per video."""

    def __init__(self, index: list[dict]):
        self.ok = np.array([r["status"] == "ok" for r in index], bool)
        self.cols = {k: np.array([r[k] for r in index], np.int64) for k in ("n_frames", "height", "width", "channels")}

    def __len__(self) -> int:
        return len(self.ok)

    def __getitem__(self, row: int) -> dict:
        out = {k: int(v[row]) for k, v in self.cols.items()}
        out.update(status="ok" if self.ok[row] else "failed", reason="" if self.ok[row] else "failed",
                   video_id=f"row {row}")  # fmt: skip
        return out

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class _ClipReader(ShardReader):
    """A ShardReader made from a full one, with the slim index (pickles light) and a close() that also
    drops the per-row offset cache, so the open-file LRU of the dataset bounds memory as well."""

    def __init__(self, full: ShardReader):  # no super().__init__(): it would re-read the index
        self.path = full.path
        self.attrs = full.attrs
        self.index = _SlimIndex(full.index)
        self._h5 = None
        self._pid = None

    def close(self) -> None:
        super().close()
        self.__dict__.pop("_offset_cache", None)


def _open(shards: dict[str, Sequence[str | Path]], views: Sequence[str]):
    """Readers {view: [ShardReader per shard]}, the videos ok in every view, the shard names, the
    frame maps {view: (stride, offset)} and a VideoRecord for every row (failed ones included)."""
    if not views:
        raise ClipsError("no views requested")
    absent = [v for v in views if v not in shards]
    if absent:
        raise ClipsError(f"no shard list for view(s) {', '.join(absent)}")
    names = {v: [Path(p).stem for p in shards[v]] for v in views}
    first = views[0]
    for v in views[1:]:
        if names[v] != names[first]:
            a, b = set(names[first]), set(names[v])
            raise ClipsError(
                f"views {first} and {v} have different shard lists: {v} lacks {sorted(a - b) or 'none'}, "
                f"{first} lacks {sorted(b - a) or 'none'}" + ("" if a != b else " (same names, different order)")
            )
    readers = {v: [ShardReader(p) for p in shards[v]] for v in views}
    maps = {}
    for v in views:
        for r in readers[v]:
            if r.attrs.get("view") != v:
                raise ClipsError(f"{r.path}: holds view {r.attrs.get('view')!r}, expected {v!r}")
        found = {frame_map(r.attrs) for r in readers[v]}
        if len(found) > 1:
            raise ClipsError(f"view {v}: shards disagree on the frame map (stride, offset): {sorted(found)}")
        maps[v] = found.pop() if found else (1, 0)
    videos, rows = [], []
    for s, name in enumerate(names[first]):
        index = {v: readers[v][s].index for v in views}
        n = len(index[first])
        for v in views[1:]:
            if len(index[v]) != n:
                raise ClipsError(f"shard {name}: {first} has {n} rows, {v} has {len(index[v])}")
        for row in range(n):
            ref = index[first][row]
            rows.append(VideoRecord(ref["video_id"], ref["path"], ref["label"], int(ref["label_index"]), ref["group"],
                                    json.loads(ref["splits"])))
            for v in views[1:]:
                if index[v][row]["video_id"] != ref["video_id"]:
                    raise ClipsError(
                        f"shard {name} row {row}: video_id {ref['video_id']!r} in {first} but "
                        f"{index[v][row]['video_id']!r} in {v} ({readers[v][s].path})"
                    )
            if any(index[v][row]["status"] != "ok" for v in views):
                continue
            length = min(_rgb_length(index[v][row]["n_frames"], *maps[v]) for v in views)
            videos.append(Video(
                video_id=ref["video_id"], label=ref["label"], label_index=int(ref["label_index"]),
                group=ref["group"], splits=json.loads(ref["splits"]), shard=s, shard_name=name, row=row,
                n_frames=int(length),
            ))  # fmt: skip
    return readers, videos, names[first], maps, rows


def video_table(shards: dict[str, Sequence[str | Path]], views: Sequence[str] | None = None) -> list[Video]:
    """Every video whose status is ok in all `views` (default: all keys of `shards`), in shard/row order."""
    return _open(shards, list(views or shards))[1]


# ------------------------------------------------------------------ groups and holdout


def _group_key(video) -> str:
    return f"g:{video.group}" if video.group else f"v:{video.video_id}"


def group_id(video) -> int:
    """Stable int64 id of a video's group (a hash of the group name, so it does not depend on the rest
    of the dataset); a video with an empty group gets an id of its own (a hash of its video_id)."""
    digest = hashlib.blake2b(_group_key(video).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def holdout(videos: Sequence, fraction: float, seed: int = 0) -> tuple[list, list]:
    """Split training-role `videos` into (train, val), keeping the input order on each side.

    Group-aware: all videos of one non-empty group land on the same side; a video with an empty group is
    a group of its own. Groups are ranked by a hash of (seed, group) and taken into val until it holds
    at least round(fraction * len(videos)) videos; with fraction > 0 and >= 2 groups each side keeps at
    least one group (a single group stays in train). A group's side depends only on the seed and on the
    groups ranked before it."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    groups: dict[str, list[int]] = {}
    for i, v in enumerate(videos):
        groups.setdefault(_group_key(v), []).append(i)
    if fraction == 0 or not videos:
        return list(videos), []

    def rank(key: str) -> bytes:
        return hashlib.blake2b(f"{int(seed)}\0{key}".encode("utf-8"), digest_size=16).digest()

    order = sorted(groups, key=rank)
    target = round(fraction * len(videos))
    chosen: list[str] = []
    count = 0
    for key in order:
        if count >= target:
            break
        chosen.append(key)
        count += len(groups[key])
    if not chosen and len(order) >= 2:
        chosen = [order[0]]
    if len(chosen) == len(order):  # never hold out every group (a single group stays in train)
        chosen.pop()
    held = {i for key in chosen for i in groups[key]}
    return [v for i, v in enumerate(videos) if i not in held], [v for i, v in enumerate(videos) if i in held]


# ------------------------------------------------------------------ temporal sampling


def clip_indices(n_frames: int, num_blocks: int = 8, block_len: int = 5, stride: int = 3,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """The N*K rgb frame indices of one clip: N contiguous, non-overlapping blocks of K frames, one frame
    every `stride` frames, from a start drawn uniformly over every start that fits (`rng`), or the centre
    start when `rng` is None.

    Short videos are kept: when the clip does not fit (n_frames < (N*K-1)*stride + 1) the stride shrinks
    to the largest that fits, (n_frames-1) // (N*K-1), down to 1; a video shorter than N*K frames is
    stretched in time: index m = floor(m * n_frames / (N*K)), i.e. every frame in order, each repeated
    once or twice (never a jump back to the start)."""
    m = num_blocks * block_len
    if n_frames < 1 or m < 1 or stride < 1:
        raise ValueError(f"bad clip request: n_frames={n_frames}, N*K={m}, stride={stride}")
    s = stride if m == 1 else min(stride, (n_frames - 1) // (m - 1))
    if s >= 1:
        free = n_frames - ((m - 1) * s + 1)
        start = free // 2 if rng is None else int(rng.integers(0, free + 1))
        return start + s * np.arange(m, dtype=np.int64)
    return (np.arange(m, dtype=np.int64) * n_frames) // m


def dense_windows(n_frames: int, num_blocks: int = 8, block_len: int = 5, stride: int = 3,
                  window_stride: int | None = None) -> np.ndarray:
    """The test windows of a video (dense evaluation), as rgb frame indices, int64 (W, N*K).

    Frames 0, stride, 2*stride, ... are cut into consecutive non-overlapping blocks of K frames (an
    incomplete last block is left out); windows of N blocks start every `window_stride` blocks (default
    N // 2: half overlap). When the last window ends before the last complete block, one more window
    ending at that block is added, so the whole video is seen. A video too short for one window at
    this stride gets exactly one window, the centre clip of `clip_indices` (stride shrunk, or frames
    repeated): every video is scored, none is dropped."""
    n, k, m = int(num_blocks), int(block_len), int(num_blocks) * int(block_len)
    ws = max(1, n // 2) if window_stride is None else int(window_stride)
    if ws < 1:
        raise ValueError(f"window_stride must be >= 1, got {window_stride}")
    if n_frames < (m - 1) * stride + 1:
        return clip_indices(n_frames, n, k, stride, None)[None]
    blocks = len(range(0, n_frames, stride)) // k
    starts = list(range(0, blocks - n + 1, ws))
    if starts[-1] != blocks - n:
        starts.append(blocks - n)
    return stride * (np.array(starts, np.int64)[:, None] * k + np.arange(m, dtype=np.int64)[None])


# ------------------------------------------------------------------ augmentation


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation parameters (docs/loader.md).

    crop_scale:  area of the crop as a fraction of short_side^2 (1 = the full short-side square)
    crop_ratio:  aspect (w/h) range, drawn log-uniformly
    p_flip:      horizontal flip probability of the views whose kind flips in training (rgb, pose, seg;
                 cocon.views), each flipped by its kind's rule (pose: left/right keypoints swap)
    jitter:      colour jitter strengths (brightness, contrast, saturation, hue), per frame, random order
    p_gray:      per-frame greying probability (rgb), applied before the jitter as in the original
    gray:        "channel" (the original: one random RGB channel copied to all three) or "luma"
                 (ITU-R 601 grey)
    shared_crop: one crop box (in relative coordinates) and one flip decision for all views of a sample
    flip_all_views: flip the views whose kind does not flip in training as well (flow: mirrored and
                 u negated, q -> 255 - q)
    p_jitter:    probability that the colour jitter is applied (per frame, or per clip when consistent)
    consistent_jitter: one jitter draw (factors and order) for every frame of the clip, as the
                 fine-tuning augmentation of CoCon/DPC (ColorJitter(consistent=True)); the default
                 (False) draws per frame, as their pretraining augmentation
    """

    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p_flip: float = 0.5
    jitter: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.25)
    p_gray: float = 0.5
    gray: str = "channel"
    shared_crop: bool = False
    flip_all_views: bool = False
    p_jitter: float = 1.0
    consistent_jitter: bool = False

    def __post_init__(self):
        if self.gray not in ("channel", "luma"):
            raise ValueError(f"gray must be 'channel' or 'luma', got {self.gray!r}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")


# Fine-tuning augmentation of CoCon's and DPC's code: crop and flip as in pretraining, one clip-consistent
# ColorJitter(0.5, 0.5, 0.5, 0.25) applied with probability 0.3, no grey.
FINETUNE_AUGMENTATION = Augmentation(p_gray=0.0, p_jitter=0.3, consistent_jitter=True)


def _draw_box(rng: np.random.Generator, aug: Augmentation) -> tuple[float, float, float, float, bool]:
    """Relative crop parameters (area, log-aspect, x, y uniforms) and a flip decision; always the same
    number of draws, whatever the outcome."""
    area = rng.uniform(*aug.crop_scale)
    ratio = math.exp(rng.uniform(math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1])))
    ux, uy = rng.random(2)
    flip = bool(rng.random() < aug.p_flip)
    return area, ratio, ux, uy, flip


def _box(h: int, w: int, area: float, ratio: float, ux: float, uy: float) -> tuple[int, int, int, int]:
    """(x0, y0, bw, bh) in a (h, w) frame for relative crop parameters."""
    s = min(h, w)
    bw = int(min(w, max(1, round(s * math.sqrt(area * ratio)))))
    bh = int(min(h, max(1, round(s * math.sqrt(area / ratio)))))
    x0 = min(int(ux * (w - bw + 1)), w - bw)
    y0 = min(int(uy * (h - bh + 1)), h - bh)
    return x0, y0, bw, bh


def _centre_box(h: int, w: int) -> tuple[int, int, int, int]:
    s = min(h, w)
    return (w - s) // 2, (h - s) // 2, s, s


def _crop_resize(frames: np.ndarray, box, size: int) -> np.ndarray:
    """uint8 (T, H, W, C) -> (T, size, size, C): crop `box` then resize (bilinear; area when the crop
    shrinks by 1.5x or more in both directions)."""
    x0, y0, bw, bh = box
    crop = frames[:, y0 : y0 + bh, x0 : x0 + bw]
    t, c = frames.shape[0], frames.shape[3]
    if bw == size and bh == size:
        return np.ascontiguousarray(crop)
    interp = cv2.INTER_AREA if (bw >= 1.5 * size and bh >= 1.5 * size) else cv2.INTER_LINEAR
    out = np.empty((t, size, size, c), np.uint8)
    for k in range(t):
        out[k] = cv2.resize(crop[k], (size, size), interpolation=interp).reshape(size, size, c)
    return out


def _colour(frames: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> None:
    """Per-frame random grey then colour jitter of uint8 RGB frames (T, H, W, 3), in place.

    Jitter as torchvision/PIL ColorJitter with a new factor set and a new random order per frame:
    brightness x*b; contrast c*x + (1-c)*mean(grey); saturation s*x + (1-s)*grey; hue: shift of the
    8-bit hue (OpenCV HSV_FULL, 256 steps per turn) by h*256, wrapping. Saturating uint8 after each op."""
    t = len(frames)
    gray_on = rng.random(t) < aug.p_gray
    gray_ch = rng.integers(0, 3, t)
    jb, jc, js, jh = aug.jitter
    fb = rng.uniform(max(0.0, 1 - jb), 1 + jb, t)
    fc = rng.uniform(max(0.0, 1 - jc), 1 + jc, t)
    fs = rng.uniform(max(0.0, 1 - js), 1 + js, t)
    fh = rng.uniform(-jh, jh, t)
    orders = np.argsort(rng.random((t, 4)), axis=1)
    jitter_on = rng.random(t) < aug.p_jitter
    if aug.consistent_jitter:  # the first frame's draws for the whole clip
        fb[:], fc[:], fs[:], fh[:], orders[:], jitter_on[:] = fb[0], fc[0], fs[0], fh[0], orders[0], jitter_on[0]
    active = (jb > 0, jc > 0, js > 0, jh > 0)
    for k in range(t):
        f = frames[k]
        if gray_on[k]:
            if aug.gray == "channel":
                f[...] = f[..., gray_ch[k], None]
            else:
                f[...] = cv2.cvtColor(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        for op in orders[k]:
            if not (active[op] and jitter_on[k]):
                continue
            if op == 0:
                f = cv2.addWeighted(f, float(fb[k]), f, 0.0, 0.0)
            elif op == 1:
                g = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
                f = cv2.addWeighted(f, float(fc[k]), f, 0.0, (1 - float(fc[k])) * cv2.mean(g)[0])
            elif op == 2:
                g = cv2.cvtColor(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
                f = cv2.addWeighted(f, float(fs[k]), g, 1 - float(fs[k]), 0.0)
            else:
                shift = np.uint8(int(round(float(fh[k]) * 256)) % 256)
                if shift:
                    hsv = cv2.cvtColor(f, cv2.COLOR_RGB2HSV_FULL)
                    hsv[..., 0] += shift  # uint8: wraps around the hue circle
                    f = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
        frames[k] = f


def _to_tensor(frames: np.ndarray, n: int, k: int, scale: np.ndarray, offset: np.ndarray) -> torch.Tensor:
    """uint8 (N*K, H, W, C) (any strides) -> float32 tensor (N, C, K, H, W), normalised."""
    _, h, w, c = frames.shape
    src = frames.reshape(n, k, h, w, c).transpose(0, 4, 1, 2, 3)
    out = np.empty((n, c, k, h, w), np.float32)
    np.multiply(src, scale.reshape(1, c, 1, 1, 1), out=out)
    out += offset.reshape(1, c, 1, 1, 1)
    return torch.from_numpy(out)


# ------------------------------------------------------------------ dataset


class MultiViewClips(Dataset):
    """Multi-view clips of one role of one split (docs/loader.md).

    shards:   {view: [shard path, ...]} (e.g. from `discover`); row i of shard s is the same video in
              every view. views: which of them to load, in output order (default: all keys).
    split:    official split whose roles are used; role: "train" (training role minus the holdout),
              "val" (the holdout: held out from the training role, group-aware), "test" (test role).
    sizes:    {view or kind: input size} overriding rgb 128, flow_* 128, pose/seg 64 (square).
    augment:  random crop/flip/grey/jitter for role "train" (see Augmentation); otherwise, and for
              val/test, the centre square of the short side resized to the input size and, for
              val/test, the centre clip in time.
    seed:     with the epoch (`set_epoch`) and the index, the only source of randomness.

    `dataset[i]` -> {view: float32 (N, C, K, H, W), "label": int64, "index": int64, "group": int64}.
    """

    def __init__(
        self,
        shards: dict[str, Sequence[str | Path]],
        views: Sequence[str] | None = None,
        split: str | int = 1,
        role: str = "train",
        holdout_fraction: float = 0.1,
        holdout_seed: int = 0,
        num_blocks: int = 8,
        block_len: int = 5,
        stride: int = 3,
        sizes: dict[str, int] | None = None,
        augment: bool = True,
        seed: int = 0,
        shared_crop: bool = False,
        augmentation: Augmentation | None = None,
        max_open_files: int = 64,
    ):
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        if min(num_blocks, block_len, stride) < 1:
            raise ValueError("num_blocks, block_len and stride must be >= 1")
        if seed < 0:
            raise ValueError("seed must be >= 0")
        self.views = list(views or shards)
        kinds = {v: V.kind_of(v) for v in self.views}
        # what augmentation needs of each view's kind, as plain picklable values (workers get a copy)
        self._aug_rules = {v: (k.colour_jitter, k.flip_in_training, k.flip) for v, k in kinds.items()}
        self.split, self.role = str(split), role
        self.num_blocks, self.block_len, self.stride = int(num_blocks), int(block_len), int(stride)
        self.seed, self.epoch = int(seed), 0
        self.augment = bool(augment) and role == "train"
        aug = augmentation or Augmentation()
        if shared_crop and not aug.shared_crop:
            aug = Augmentation(**{**aug.__dict__, "shared_crop": True})
        self.augmentation = aug
        sizes = dict(sizes or {})
        self.sizes = {v: V.input_size(v, sizes) for v in self.views}

        readers, table, self.shard_names, self._maps, rows = _open(shards, self.views)
        labels = {r.label_index: r.label for r in rows}
        # class k's name (label_index order), over every row of the shards, failed videos included
        self.class_names = [labels.get(k, f"class_{k}") for k in range(max(labels) + 1)] if labels else []
        pool = [v for v in table if v.role(self.split) == ("test" if role == "test" else "train")]
        if role != "test":
            # drawn over every training-role row of the shards, failed ones included, so that the
            # validation subset does not depend on which views are loaded nor on failures
            held = {r.video_id for r in holdout([r for r in rows if r.role(self.split) == "train"],
                                                holdout_fraction, holdout_seed)[1]}
            pool = [v for v in pool if (v.video_id in held) == (role == "val")]
        self._videos = pool
        self._readers = {v: [_ClipReader(r) for r in readers[v]] for v in self.views}
        self.bounds = {v: _bound(readers[v][0].attrs) for v in self.views if kinds[v].name == "flow" and readers[v]}
        self._shard = np.array([v.shard for v in pool], np.int32)
        self._row = np.array([v.row for v in pool], np.int32)
        self._len = np.array([v.n_frames for v in pool], np.int64)
        self._label = np.array([v.label_index for v in pool], np.int64)
        self._group = np.array([group_id(v) for v in pool], np.int64)
        self._norm = {}
        for v in self.views:
            chans = {int(r.index.cols["channels"][r.index.ok].max()) for r in self._readers[v] if r.index.ok.any()}
            if len(chans) > 1:
                raise ClipsError(f"view {v}: shards disagree on the channel count ({sorted(chans)})")
            self._norm[v] = kinds[v].normaliser(chans.pop() if chans else None)
        self.max_open_files = int(max_open_files)
        self._lru: OrderedDict = OrderedDict()
        self._lru_pid = os.getpid()

    # -- bookkeeping

    @property
    def videos(self) -> list[Video]:
        """The videos of this dataset, in index order (only in the process that built it)."""
        if self._videos is None:
            raise AttributeError("MultiViewClips.videos is dropped when the dataset is pickled (workers)")
        return self._videos

    def __len__(self) -> int:
        return len(self._row)

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError("epoch must be >= 0")
        self.epoch = int(epoch)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_videos=None, _lru=OrderedDict(), _lru_pid=None)
        return state

    def _reader(self, view: str, shard: int) -> ShardReader:
        """The reader, counted in a per-process LRU of open files (at most max_open_files stay open)."""
        if self._lru_pid != os.getpid():  # inherited through fork: those handles are not ours to close
            self._lru, self._lru_pid = OrderedDict(), os.getpid()
        r = self._readers[view][shard]
        key = (view, shard)
        self._lru[key] = r
        self._lru.move_to_end(key)
        while len(self._lru) > self.max_open_files:
            _, old = self._lru.popitem(last=False)
            old.close()
        return r

    # -- sampling

    def frame_indices(self, i: int, epoch: int | None = None) -> np.ndarray:
        """The rgb frame indices of sample i (the same for every view)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, int(i), 0]) if self.role == "train" else None
        return clip_indices(int(self._len[i]), self.num_blocks, self.block_len, self.stride, rng)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} clips")
        epoch, shard, row = self.epoch, int(self._shard[i]), int(self._row[i])
        idx = self.frame_indices(i, epoch)
        shared = None
        if self.augment and self.augmentation.shared_crop:
            shared = _draw_box(np.random.default_rng([self.seed, epoch, i, 2]), self.augmentation)
        out = {}
        for v in self.views:
            reader = self._reader(v, shard)
            n_own = int(reader.index.cols["n_frames"][row])
            frames = reader.read(row, view_frame_indices(idx, n_own, *self._maps[v]))
            out[v] = self._view(v, frames, i, epoch, shared)
        out["label"] = torch.tensor(self._label[i], dtype=torch.int64)
        out["index"] = torch.tensor(i, dtype=torch.int64)
        out["group"] = torch.tensor(self._group[i], dtype=torch.int64)
        return out

    def _view(self, view: str, frames: np.ndarray, i: int, epoch: int, shared) -> torch.Tensor:
        (colour, flips, flip_rule), size, aug = self._aug_rules[view], self.sizes[view], self.augmentation
        h, w = frames.shape[1:3]
        if not self.augment:
            frames = _crop_resize(frames, _centre_box(h, w), size)
        else:
            rng = np.random.default_rng([self.seed, epoch, i, 1, zlib.crc32(view.encode("utf-8"))])
            area, ratio, ux, uy, flip = _draw_box(rng, aug)
            if shared is not None:
                area, ratio, ux, uy, flip = shared
            frames = _crop_resize(frames, _box(h, w, area, ratio, ux, uy), size)
            if colour:
                _colour(frames, rng, aug)
            if flip and (flips or aug.flip_all_views):
                frames = flip_rule.apply(frames)
        return _to_tensor(frames, self.num_blocks, self.block_len, *self._norm[view])


class DenseClips(MultiViewClips):
    """Every test window of every video of a role, centre-cropped (docs/evaluation.md).

    Same arguments as MultiViewClips (augmentation off; role "test", or "train" with
    holdout_fraction 0 for the whole training role), plus `window_stride` (see `dense_windows`) and
    `extra_blocks` (0 = none): also return that many blocks spread over the whole video, for block-level
    analyses (soft alignment).

    `dataset[i]` -> {view: float32 (W, N, C, K, H, W), "label", "index", "group": int64,
    "windows": int64 W, and with extra_blocks: "blocks/<view>": float32 (extra_blocks, C, K, H, W)}.
    W varies per video: iterate with batch_size=None (one video per item)."""

    def __init__(self, *args, window_stride: int | None = None, extra_blocks: int = 0, **kwargs):
        kwargs["augment"] = False
        super().__init__(*args, **kwargs)
        self.window_stride = window_stride
        self.extra_blocks = int(extra_blocks)

    def windows(self, i: int) -> np.ndarray:
        """rgb frame indices (W, N*K) of video i's test windows."""
        return dense_windows(int(self._len[i]), self.num_blocks, self.block_len, self.stride, self.window_stride)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} videos")
        shard, row = int(self._shard[i]), int(self._row[i])
        wins = self.windows(i)
        groups = {"": wins.reshape(-1)}
        if self.extra_blocks:
            groups["blocks/"] = clip_indices(int(self._len[i]), self.extra_blocks, self.block_len, self.stride, None)
        out = {}
        for v in self.views:
            reader = self._reader(v, shard)
            n_own = int(reader.index.cols["n_frames"][row])
            wanted = {prefix: view_frame_indices(idx, n_own, *self._maps[v]) for prefix, idx in groups.items()}
            unique, inverse = np.unique(np.concatenate(list(wanted.values())), return_inverse=True)
            frames = reader.read(row, unique)
            h, w = frames.shape[1:3]
            frames = _crop_resize(frames, _centre_box(h, w), self.sizes[v])  # each stored frame decoded once
            start = 0
            for prefix, idx in wanted.items():
                sel = frames[inverse[start:start + len(idx)]]
                start += len(idx)
                nblocks = len(idx) // self.block_len
                t = _to_tensor(sel, nblocks, self.block_len, *self._norm[v])
                out[prefix + v] = t.reshape(len(wins), self.num_blocks, *t.shape[1:]) if prefix == "" else t
        out["label"] = torch.tensor(self._label[i], dtype=torch.int64)
        out["index"] = torch.tensor(i, dtype=torch.int64)
        out["group"] = torch.tensor(self._group[i], dtype=torch.int64)
        out["windows"] = torch.tensor(len(wins), dtype=torch.int64)
        return out


def _bound(attrs: dict) -> float | None:
    params = attrs.get("params")
    try:
        params = json.loads(params) if isinstance(params, str) else (params or {})
        return float(params["bound"])
    except (ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------ loader


class ClipLoader(DataLoader):
    """A DataLoader whose `set_epoch(epoch)` sets the epoch of both the dataset (augmentation and
    temporal draws) and the sampler (order). Call it before iterating each epoch: workers are started
    per iteration (no persistent workers), so they see the epoch that was set."""

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)


def _worker_context() -> str:
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _worker_init(_worker_id: int) -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_loader(dataset: MultiViewClips, batch_size: int, workers: int = 0, shuffle: bool = True, seed: int = 0,
                epoch: int = 0, distributed: bool = False, drop_last: bool = False,
                pin_memory: bool = False) -> ClipLoader:
    """DataLoader over `dataset` with the default collate ({view: (B, N, C, K, H, W), label, index, group}).

    Order: a DistributedSampler, over the initialised process group when `distributed` and
    torch.distributed is initialised, otherwise a single replica (num_replicas=1), so the order is
    torch.randperm seeded with seed + epoch in both cases. `epoch` is set now; call set_epoch later."""
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    else:
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed, drop_last=drop_last)
    loader = ClipLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=pin_memory, worker_init_fn=_worker_init if workers > 0 else None, persistent_workers=False,
        # workers come from a clean forkserver, never forked from a process with live threads (OpenCV,
        # torch, thread pools), which can deadlock the child; the dataset pickles light
        multiprocessing_context=_worker_context() if workers > 0 else None,
    )  # fmt: skip
    loader.set_epoch(epoch)
    return loader
