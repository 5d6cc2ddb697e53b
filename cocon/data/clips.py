"""Training data loader: multi-view clips read from the HDF5 shards. Spec: docs/loader.md.

    shards = discover("results", ["rgb", "flow_tvl1"])          # {view: [path, ...]}
    train = MultiViewClips(shards, split=1, role="train", holdout_fraction=0.1)
    loader = make_loader(train, batch_size=16, workers=8, shuffle=True, seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:     # batch["rgb"]: float32 (B, N, 3, K, H, W); "label", "index", "group": int64 (B,)
            ...

Training on a GPU: `MultiViewClips(..., output="uint8")` makes the workers hand uint8 clips and the sample's
augmentation parameters; `dataset.finisher()` (cocon.data.augment.Finish) does the float part per batch on
the device (docs/loader.md, "The uint8 path"). The float samples above are that same function run on the
CPU, per sample.

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
import os
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cocon import views as V
from cocon.data.augment import (  # noqa: F401  (_draw_box, _box, _centre_box, _crop_resize: used through this module)
    FINETUNE_AUGMENTATION,
    Augmentation,
    Finish,
    ViewSpec,
    _area_shrink,
    _box,
    _centre_box,
    _crop_resize,
    _draw_box,
    _max_box,
    aug_key,
    draw_colour,
    geometry,
    train_scale,
)
from cocon.data.shards import ShardFormatError, ShardReader
from cocon.sources.records import VideoRecord

__all__ = [
    "ClipsError",
    "Video",
    "Augmentation",
    "FINETUNE_AUGMENTATION",
    "Finish",
    "MultiViewClips",
    "DenseClips",
    "ClipLoader",
    "dense_windows",
    "discover",
    "video_table",
    "holdout",
    "group_id",
    "clip_indices",
    "frame_map",
    "view_frame_indices",
    "make_loader",
]

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
        out.update(
            status="ok" if self.ok[row] else "failed", reason="" if self.ok[row] else "failed", video_id=f"row {row}"
        )
        return out

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class _ClipReader(ShardReader):
    """A ShardReader made from a full one, with the slim index (pickles light), and the loader's read
    path: `images(row, frames, offsets)` decodes each distinct frame once, to (H, W, C), using the
    byte offsets the dataset read once per shard (no per-sample /offsets lookup)."""

    def __init__(self, full: ShardReader):  # no super().__init__(): it would re-read the index
        self.path = full.path
        self.attrs = full.attrs
        self.index = _SlimIndex(full.index)
        self._h5 = None
        self._pid = None

    def close(self) -> None:
        super().close()
        self.__dict__.pop("_offset_cache", None)

    def shape(self, row: int) -> tuple[int, int, int]:
        c = self.index.cols
        return int(c["height"][row]), int(c["width"][row]), int(c["channels"][row])

    def images(self, row: int, frames: np.ndarray, offsets: np.ndarray | None) -> list[np.ndarray]:
        """uint8 (H, W, C) of each of `frames` (sorted, distinct, in range). `offsets`: the row's
        (T + 1,) byte offsets for jpeg/png shards, None for raw ones. Stacked-plane images (flow) are
        de-interleaved by one cv2.merge per frame (a plain copy)."""
        h, w, c = self.shape(row)
        ds = h5py.Dataset(h5py.h5d.open(self._file().id, f"videos/{row:05d}".encode()))
        if offsets is None:  # raw: one chunk per frame
            return [ds[int(k)] for k in frames]
        starts, ends = offsets[frames].tolist(), offsets[frames + 1].tolist()
        lo, hi = starts[0], ends[-1]
        if hi - lo <= 4 * (sum(ends) - sum(starts)):  # one contiguous read covers the clip cheaply
            span = ds[lo:hi]
            bufs = [span[a - lo : b - lo] for a, b in zip(starts, ends)]
        else:
            bufs = [ds[a:b] for a, b in zip(starts, ends)]
        flag = cv2.IMREAD_COLOR_RGB if c == 3 else cv2.IMREAD_GRAYSCALE
        decoded = (h, w, 3) if c == 3 else ((h, w) if c == 1 else (c * h, w))
        out = []
        for b in bufs:
            img = cv2.imdecode(b, flag)
            if img is None or img.shape != decoded:
                raise ShardFormatError(f"{self.path}: a stored image of row {row} could not be decoded to {(h, w, c)}")
            if c == 1:
                img = img.reshape(h, w, 1)
            elif c != 3:  # planes stacked vertically -> channels last: one cv2.merge, a plain copy
                img = cv2.merge([img[k * h : (k + 1) * h] for k in range(c)]).reshape(h, w, c)
            out.append(img)
        return out


def _read_offsets(path: str, rows: Sequence[int]) -> list[np.ndarray] | None:
    """The /offsets/<row> arrays of `rows` of one shard, one file open (None for a raw shard)."""
    with h5py.File(path, "r") as f:
        if "offsets" not in f:
            return None
        out = []
        for row in rows:
            d = h5py.h5d.open(f.id, f"offsets/{int(row):05d}".encode())
            a = np.empty(d.shape, np.int64)
            d.read(h5py.h5s.ALL, h5py.h5s.ALL, a)
            out.append(a)
        return out


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
            rows.append(
                VideoRecord(
                    ref["video_id"],
                    ref["path"],
                    ref["label"],
                    int(ref["label_index"]),
                    ref["group"],
                    json.loads(ref["splits"]),
                )
            )
            for v in views[1:]:
                if index[v][row]["video_id"] != ref["video_id"]:
                    raise ClipsError(
                        f"shard {name} row {row}: video_id {ref['video_id']!r} in {first} but "
                        f"{index[v][row]['video_id']!r} in {v} ({readers[v][s].path})"
                    )
            if any(index[v][row]["status"] != "ok" for v in views):
                continue
            length = min(_rgb_length(index[v][row]["n_frames"], *maps[v]) for v in views)
            videos.append(
                Video(
                    video_id=ref["video_id"],
                    label=ref["label"],
                    label_index=int(ref["label_index"]),
                    group=ref["group"],
                    splits=json.loads(ref["splits"]),
                    shard=s,
                    shard_name=name,
                    row=row,
                    n_frames=int(length),
                )
            )
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
        return hashlib.blake2b(f"{int(seed)}\0{key}".encode(), digest_size=16).digest()

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


def clip_indices(
    n_frames: int, num_blocks: int = 8, block_len: int = 5, stride: int = 3, rng: np.random.Generator | None = None
) -> np.ndarray:
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


def dense_windows(
    n_frames: int, num_blocks: int = 8, block_len: int = 5, stride: int = 3, window_stride: int | None = None
) -> np.ndarray:
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


# ------------------------------------------------------------------ augmentation (cocon.data.augment)


def _crop(images: list[np.ndarray], inverse: np.ndarray, box, out: np.ndarray) -> np.ndarray:
    """Copy the `box` (x0, y0, bw, bh) of frame t = images[inverse[t]] ((H, W, C) each) into
    out[t, :bh, :bw] (uint8 (T, >= bh, >= bw, C)); returns `out`."""
    x0, y0, bw, bh = box
    for t, j in enumerate(inverse):
        out[t, :bh, :bw] = images[j][y0 : y0 + bh, x0 : x0 + bw]
    return out


def _to_tensor(frames: np.ndarray, n: int, k: int, scale: np.ndarray, offset: np.ndarray) -> torch.Tensor:
    """uint8 (N*K, H, W, C) (any strides) -> float32 tensor (N, C, K, H, W), normalised."""
    _, h, w, c = frames.shape
    src = frames.reshape(n, k, h, w, c).transpose(0, 4, 1, 2, 3)
    out = np.empty((n, c, k, h, w), np.float32)
    np.multiply(src, scale.reshape(1, c, 1, 1, 1), out=out)
    out += offset.reshape(1, c, 1, 1, 1)
    return torch.from_numpy(out)


# ------------------------------------------------------------------ dataset


OUTPUTS = ("float", "uint8")


def eval_centre_crop(cfg: dict) -> float:
    """The centre crop of validation and test clips for the config's train.eval_crop, as a fraction of the
    short side: the training crops' mean side (train_scale) or 1 (full)."""
    return train_scale(Augmentation()) if cfg["train"]["eval_crop"] == "train_scale" else 1.0


class MultiViewClips(Dataset):
    """Multi-view clips of one role of one split (docs/loader.md).

    shards:   {view: [shard path, ...]} (e.g. from `discover`); row i of shard s is the same video in
              every view. views: which of them to load, in output order (default: all keys).
    split:    official split whose roles are used; role: "train" (training role minus the holdout),
              "val" (the holdout: held out from the training role, group-aware), "test" (test role).
    sizes:    {view or kind: input size} overriding rgb 128, flow_* 128, pose/seg 64 (square).
    augment:  random crop/flip/grey/jitter for role "train" (see Augmentation); otherwise, and for
              val/test, the centred square of `centre_crop` x the short side (1 = all of it; the
              config's train.eval_crop: train_scale = the training crops' mean side, augment.train_scale)
              resized to the input size and, for val/test, the centre clip in time.
    seed:     with the epoch (`set_epoch`) and the index, the only source of randomness.
    output:   "float" (default): `dataset[i]` -> {view: float32 (N, C, K, H, W), "label": int64,
              "index": int64, "group": int64}. "uint8": the clips as the workers hand them to the
              training device, {view: uint8 (N*K, Hc, Wc, C) canvas, "aug/<view>/...": the sample's
              augmentation parameters, "label", "index", "group"}; `finisher()` turns a collated batch
              of them into the float clips, on any device. A float sample is exactly that function
              applied to the uint8 sample on the CPU (docs/loader.md, "The uint8 path").
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
        output: str = "float",
        centre_crop: float = 1.0,
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
        self.output = output
        if not 0 < centre_crop <= 1:
            raise ValueError(f"centre_crop must be in (0, 1], got {centre_crop}")
        self.centre_crop = float(centre_crop)
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
            held = {
                r.video_id
                for r in holdout([r for r in rows if r.role(self.split) == "train"], holdout_fraction, holdout_seed)[1]
            }
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
        self._offsets = {v: self._load_offsets(v) for v in self.views}
        self._canvas = {v: self._canvas_shape(v) for v in self.views}
        self._finish = self.finisher()
        self.max_open_files = int(max_open_files)
        self._lru: OrderedDict = OrderedDict()
        self._lru_pid = os.getpid()

    def _load_offsets(self, view: str):
        """Byte offsets of every video of the dataset in a jpeg/png view, read once per shard (one file
        open, one small read per video) when the dataset is built: (flat int64 tensor, start (len + 1,)),
        video i's offsets being flat[start[i]:start[i + 1]]; None for raw views. A tensor, so that the
        DataLoader hands it to its workers through shared memory."""
        n = len(self._row)
        got: list = [None] * n
        for s in np.unique(self._shard):
            where = np.flatnonzero(self._shard == s)
            offs = _read_offsets(self._readers[view][int(s)].path, self._row[where])
            if offs is None:
                continue
            for i, a in zip(where, offs):
                got[int(i)] = a
        if n == 0 or any(g is None for g in got):
            if any(g is not None for g in got):
                raise ClipsError(f"view {view}: shards mix raw and encoded (jpeg/png) videos")
            return None
        start = np.zeros(n + 1, np.int64)
        np.cumsum([len(a) for a in got], out=start[1:])
        return torch.from_numpy(np.concatenate(got)), start

    def _canvas_shape(self, view: str) -> tuple[int, int]:
        """(Hc, Wc) of the uint8 canvases of a view: the largest crop box its videos can draw, at most
        1.5x the input size each way (a box that does not fit, or that shrinks by 1.5x or more both ways,
        is resized by the worker and handed over at the input size); the input size without
        augmentation."""
        size = self.sizes[view]
        if not self.augment or not len(self._row):
            return size, size
        cols = [r.index.cols for r in self._readers[view]]
        shapes = {(int(cols[s]["height"][r]), int(cols[s]["width"][r])) for s, r in zip(self._shard, self._row)}
        bounds = [_max_box(h, w, self.augmentation) for h, w in shapes]
        bh, bw = max(b[0] for b in bounds), max(b[1] for b in bounds)
        cap = int(1.5 * size)
        hc, wc = min(bh, cap), min(bw, cap)
        if bh > hc or bw > wc or any(_area_shrink(h, w, size) for h, w in bounds):
            hc, wc = max(hc, size), max(wc, size)
        return hc, wc

    # -- bookkeeping

    @property
    def output(self) -> str:
        return self._output

    @output.setter
    def output(self, value: str) -> None:
        if value not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {value!r}")
        self._output = value

    def finisher(self) -> Finish:
        """The float part of this dataset's samples (cocon.data.augment.Finish) for batches of
        output="uint8" samples: `finisher()(batch, device)` -> {view: float32 (B, N, C, K, S, S)}."""
        specs = {}
        for v in self.views:
            scale, offset = self._norm[v]
            rule = self._aug_rules[v][2]
            specs[v] = ViewSpec(
                self.num_blocks,
                self.block_len,
                self.sizes[v],
                tuple(float(x) for x in scale),
                tuple(float(x) for x in offset),
                tuple(rule.negate),
                tuple(rule.permute),
            )
        return Finish(specs)

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

    def _images(self, view: str, i: int, own: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, tuple]:
        """Sample i's frames `own` (the view's own indices) of `view`: the distinct frames decoded
        ((H, W, C) each), the position of each wanted frame among them, and (H, W, C)."""
        reader = self._reader(view, int(self._shard[i]))
        row = int(self._row[i])
        uniq, inverse = np.unique(own, return_inverse=True)
        n_own = int(reader.index.cols["n_frames"][row])
        if uniq.size and (uniq[0] < 0 or uniq[-1] >= n_own):
            raise IndexError(f"frame index out of range 0..{n_own - 1} for row {row} of {reader.path}")
        off = self._offsets[view]
        offsets = None if off is None else off[0][int(off[1][i]) : int(off[1][i + 1])].numpy()
        return reader.images(row, uniq, offsets), inverse.reshape(-1), reader.shape(row)

    # -- sampling

    def frame_indices(self, i: int, epoch: int | None = None) -> np.ndarray:
        """The rgb frame indices of sample i (the same for every view)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, int(i), 0]) if self.role == "train" else None
        return clip_indices(int(self._len[i]), self.num_blocks, self.block_len, self.stride, rng)

    def __getitem__(self, i: int) -> dict:
        sample = self.sample(i)
        if self._output == "uint8":
            return sample
        x = self._finish({k: t[None] for k, t in sample.items()}, "cpu", contiguous=True)
        return {**{v: x[v][0] for v in self.views}, **{k: sample[k] for k in ("label", "index", "group")}}

    def sample(self, i: int) -> dict:
        """Sample i as output="uint8" gives it, whatever `output` is."""
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
            n_own = int(self._readers[v][shard].index.cols["n_frames"][row])
            images, inverse, shape = self._images(v, i, view_frame_indices(idx, n_own, *self._maps[v]))
            out.update(self._view(v, images, inverse, shape, i, epoch, shared))
        out["label"] = torch.tensor(self._label[i], dtype=torch.int64)
        out["index"] = torch.tensor(i, dtype=torch.int64)
        out["group"] = torch.tensor(self._group[i], dtype=torch.int64)
        return out

    def _view(self, view: str, images, inverse, shape, i: int, epoch: int, shared) -> dict:
        """The uint8 canvas of one view of sample i and its augmentation parameters. Integer work only:
        the crop copied to the canvas origin (or, when the canvas cannot hold it or it shrinks by 1.5x or
        more both ways, resized by OpenCV to the input size), the rest of the canvas zeroed; resampling,
        flip, colour and normalisation are described, and done by Finish."""
        (colour, flips, _), size, aug = self._aug_rules[view], self.sizes[view], self.augmentation
        h, w, c = shape
        hc, wc = self._canvas[view]
        canvas = np.empty((len(inverse), hc, wc, c), np.uint8)
        out = {}
        flip = False
        if not self.augment:
            canvas[:, :size, :size] = self._resized(images, inverse, _centre_box(h, w, self.centre_crop), size, c)
            bh = bw = size
        else:
            rng = np.random.default_rng([self.seed, epoch, i, 1, zlib.crc32(view.encode("utf-8"))])
            area, ratio, ux, uy, flip = _draw_box(rng, aug)
            if shared is not None:
                area, ratio, ux, uy, flip = shared
            box = _box(h, w, area, ratio, ux, uy)
            bw, bh = box[2], box[3]
            if bh <= hc and bw <= wc and not _area_shrink(bh, bw, size):
                _crop(images, inverse, box, canvas)
            else:
                canvas[:, :size, :size] = self._resized(images, inverse, box, size, c)
                bh = bw = size
            if colour:
                out.update(
                    {aug_key(view, k): torch.from_numpy(a) for k, a in draw_colour(rng, len(inverse), aug).items()}
                )
            flip = bool(flip and (flips or aug.flip_all_views))
        canvas[:, bh:] = 0  # the rest of the canvas is never read; zeroed so that samples compare equal
        canvas[:, :bh, bw:] = 0
        index, weight = geometry(bh, bw, size, flip)
        out[view] = torch.from_numpy(canvas)
        out[aug_key(view, "index")] = torch.from_numpy(np.ascontiguousarray(index))
        out[aug_key(view, "weight")] = torch.from_numpy(np.ascontiguousarray(weight))
        out[aug_key(view, "flip")] = torch.tensor(flip)
        return out

    @staticmethod
    def _resized(images, inverse, box, size: int, c: int) -> np.ndarray:
        """The box of every frame resized to (size, size) by OpenCV (`_crop_resize`)."""
        x0, y0, bw, bh = box
        crop = _crop(images, inverse, box, np.empty((len(inverse), bh, bw, c), np.uint8))
        return _crop_resize(crop, (0, 0, bw, bh), size)


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
            n_own = int(self._readers[v][shard].index.cols["n_frames"][row])
            wanted = {prefix: view_frame_indices(idx, n_own, *self._maps[v]) for prefix, idx in groups.items()}
            images, inverse, (h, w, c) = self._images(v, i, np.concatenate(list(wanted.values())))
            # each stored frame decoded, cropped and resized once
            frames = self._resized(
                images, np.arange(len(images)), _centre_box(h, w, self.centre_crop), self.sizes[v], c
            )
            start = 0
            for prefix, idx in wanted.items():
                sel = frames[inverse[start : start + len(idx)]]
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
        worker_init_fn=_worker_init if workers > 0 else None,
        persistent_workers=False,
        # workers come from a clean forkserver, never forked from a process with live threads (OpenCV,
        # torch, thread pools), which can deadlock the child; the dataset pickles light
        multiprocessing_context=_worker_context() if workers > 0 else None,
    )
    loader.set_epoch(epoch)
    return loader
