"""The loader's datasets (docs/loader.md): `MultiViewClips`, clips of several views of one role for
training and validation, and `DenseClips`, every test window of every video for dense evaluation.

A sample is one clip of N blocks of K frames (default 8 x 5, one frame in every 3), read at the SAME
frame indices in every view. Its content depends only on (seed, epoch, index): every random draw comes
from a NumPy generator seeded with that triple (never from a global RNG), so the samples are the same
for any number of workers, processes or DistributedSampler ranks. The workers hand uint8 canvases and
the sample's augmentation parameters (output="uint8"); `Finish` (cocon.data.augment) does the float part,
per batch on the training device or per sample in the worker (output="float")."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cocon import views as V
from cocon.data import reading
from cocon.data.augment import (
    Augmentation,
    Finish,
    ViewSpec,
    area_shrink,
    aug_key,
    canvas_shape,
    centre_box,
    crop_box,
    draw_box,
    draw_colour,
    geometry,
    intensity_box,
    train_scale,
)
from cocon.data.index import ROLES, ClipsError, Partition, Video, flow_bound, group_id, open_views
from cocon.data.sampling import ClipGeometry, clip_indices, view_frame_indices

__all__ = ["OUTPUTS", "MultiViewClips", "DenseClips", "eval_centre_crop", "training_augmentation"]

OUTPUTS = ("float", "uint8")

# the flat keywords of the grouped arguments, still accepted: {keyword: field}
_CLIP_KEYWORDS = {"num_blocks": "num_blocks", "block_len": "block_len", "stride": "stride", "sizes": "sizes"}
_PARTITION_KEYWORDS = {"split": "split", "holdout_fraction": "fraction", "holdout_seed": "seed"}


def training_augmentation(cfg: dict, base: Augmentation | None = None) -> Augmentation:
    """`base` (default: the pretraining augmentation) with the config's crop: train.crop_area and
    train.intensity_crop."""
    tc, base = cfg["train"], base or Augmentation()
    # train.intensity_crop is absent from the jobs of views it does not concern (cocon.workflow.jobs)
    intensity = tc.get("intensity_crop", base.intensity_crop)
    return dataclasses.replace(base, crop_scale=tuple(tc["crop_area"]), intensity_crop=intensity)


def eval_centre_crop(cfg: dict) -> float:
    """The centre crop of validation and test clips for the config's train.eval_crop, as a fraction of the
    short side: the random training crops' mean side (train_scale) or 1 (full)."""
    crop = Augmentation(crop_scale=tuple(cfg["train"]["crop_area"]))
    return train_scale(crop) if cfg["train"]["eval_crop"] == "train_scale" else 1.0


def _grouped(clip: ClipGeometry | None, partition: Partition | None, flat: dict) -> tuple[ClipGeometry, Partition]:
    """The clip geometry and the partition, from the grouped arguments or from the flat keywords that
    name their fields (num_blocks, block_len, stride, sizes; split, holdout_fraction, holdout_seed)."""
    unknown = sorted(set(flat) - set(_CLIP_KEYWORDS) - set(_PARTITION_KEYWORDS))
    if unknown:
        raise TypeError(f"MultiViewClips() got unexpected keyword argument(s): {', '.join(unknown)}")
    groups = []
    for given, keywords, cls, name in (
        (clip, _CLIP_KEYWORDS, ClipGeometry, "clip"),
        (partition, _PARTITION_KEYWORDS, Partition, "partition"),
    ):
        fields = {f: flat[k] for k, f in keywords.items() if k in flat}
        if given is not None and fields:
            raise TypeError(
                f"MultiViewClips(): give {name}= or {', '.join(sorted(set(keywords) & set(flat)))}, not both"
            )
        groups.append(given if given is not None else cls(**fields))
    return groups[0], groups[1]


class MultiViewClips(Dataset):
    """Multi-view clips of one role of one split (docs/loader.md).

    shards:    {view: [shard path, ...]} (e.g. from `discover`); row i of shard s is the same video in
               every view. views: which of them to load, in output order (default: all keys).
    role:      "train" (training role minus the hold-out), "val" (the hold-out: held out from the training
               role, group-aware), "test" (test role).
    clip:      ClipGeometry (N blocks, K frames, frame stride, input sizes); partition: Partition (split,
               hold-out fraction and seed). Their fields are also accepted as the flat keywords num_blocks,
               block_len, stride, sizes, split, holdout_fraction, holdout_seed.
    augment:   random crop/flip/grey/jitter for role "train", as `augmentation` (default Augmentation();
               its shared_crop draws one box for all views); otherwise, and for val/test, the centred square
               of `centre_crop` x the short side (1 = all of it; the config's train.eval_crop: train_scale =
               the training crops' mean side) resized to the input size and, for val/test, the centre clip
               in time.
    seed:      with the epoch (`set_epoch`) and the index, the only source of randomness.
    output:    "float" (default): `dataset[i]` -> {view: float32 (N, C, K, H, W), "label": int64,
               "index": int64, "group": int64}. "uint8": the clips as the workers hand them to the
               training device, {view: uint8 (N*K, Hc, Wc, C) canvas, "aug/<view>/...": the sample's
               augmentation parameters, "label", "index", "group"}; `finisher()` turns a collated batch
               of them into the float clips, on any device. A float sample is exactly that function
               applied to the uint8 sample on the CPU (docs/loader.md, "The uint8 path").
    max_open_files: shard files kept open per process (LRU).
    """

    def __init__(
        self,
        shards: dict[str, Sequence[str | Path]],
        views: Sequence[str] | None = None,
        *,
        role: str = "train",
        clip: ClipGeometry | None = None,
        partition: Partition | None = None,
        augment: bool = True,
        augmentation: Augmentation | None = None,
        seed: int = 0,
        centre_crop: float = 1.0,
        output: str = "float",
        max_open_files: int = 64,
        **flat,
    ):
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self.clip, self.partition = _grouped(clip, partition, flat)
        if seed < 0:
            raise ValueError("seed must be >= 0")
        self.views = list(views or shards)
        kinds = {v: V.kind_of(v) for v in self.views}
        # what augmentation needs of each view's kind, as plain picklable values (workers get a copy)
        self._aug_rules = {v: (k.colour_jitter, k.flip_in_training, k.flip) for v, k in kinds.items()}
        self._intensity = {v: k.intensity_crop for v, k in kinds.items()}
        self.role = role
        self.seed, self.epoch = int(seed), 0
        self.augment = bool(augment) and role == "train"
        self.output = output
        if not 0 < centre_crop <= 1:
            raise ValueError(f"centre_crop must be in (0, 1], got {centre_crop}")
        self.centre_crop = float(centre_crop)
        self.augmentation = augmentation or Augmentation()
        self.sizes = {v: self.clip.input_size(v) for v in self.views}

        readers, table, self.shard_names, self._maps, rows = open_views(shards, self.views)
        labels = {r.label_index: r.label for r in rows}
        # class k's name (label_index order), over every row of the shards, failed videos included
        self.class_names = [labels.get(k, f"class_{k}") for k in range(max(labels) + 1)] if labels else []
        pool = self.partition.select(role, table, rows)
        self._videos = pool
        self._readers = {v: [reading.ClipReader(r) for r in readers[v]] for v in self.views}
        self.bounds = {v: flow_bound(readers[v][0].attrs) for v in self.views if kinds[v].name == "flow" and readers[v]}
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
        self._offsets = {v: reading.load_offsets(v, self._readers[v], self._shard, self._row) for v in self.views}
        self._canvas = {v: self._canvas_shape(v) for v in self.views}
        self._finish = self.finisher()
        self._files = reading.OpenFiles(max_open_files)

    def _canvas_shape(self, view: str) -> tuple[int, int]:
        """(Hc, Wc) of the uint8 canvases of a view (augment.canvas_shape over its videos' frame sizes);
        the input size without augmentation."""
        size = self.sizes[view]
        if not self.augment or not len(self._row):
            return size, size
        cols = [r.index.cols for r in self._readers[view]]
        shapes = {(int(cols[s]["height"][r]), int(cols[s]["width"][r])) for s, r in zip(self._shard, self._row)}
        return canvas_shape(shapes, size, self.augmentation)

    # -- bookkeeping

    num_blocks = property(lambda self: self.clip.num_blocks, doc="N, blocks per clip")
    block_len = property(lambda self: self.clip.block_len, doc="K, frames per block")
    stride = property(lambda self: self.clip.stride, doc="rgb frames between two frames of a block")
    split = property(lambda self: self.partition.split, doc="the official split whose roles are used (str)")
    max_open_files = property(lambda self: self._files.limit, doc="shard files kept open per process")

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
        return {**self.__dict__, "_videos": None}

    def _reader(self, view: str, shard: int):
        """The reader of a shard of `view`, counted in the per-process LRU of open files."""
        return self._files.use((view, shard), self._readers[view][shard])

    def _images(self, view: str, i: int, own: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, tuple]:
        """Sample i's frames `own` (the view's own indices) of `view` (reading.read_frames)."""
        reader = self._reader(view, int(self._shard[i]))
        return reading.read_frames(reader, int(self._row[i]), own, reading.video_offsets(self._offsets[view], i))

    def _own_frames(self, view: str, i: int, rgb_indices: np.ndarray) -> np.ndarray:
        """rgb frame indices of sample i -> the view's own frame indices (its frame map)."""
        n_own = int(self._readers[view][int(self._shard[i])].index.cols["n_frames"][int(self._row[i])])
        return view_frame_indices(rgb_indices, n_own, *self._maps[view])

    def _tail(self, i: int) -> dict:
        """The int64 scalars of sample i: label, index, group."""
        return {
            "label": torch.tensor(self._label[i], dtype=torch.int64),
            "index": torch.tensor(i, dtype=torch.int64),
            "group": torch.tensor(self._group[i], dtype=torch.int64),
        }

    # -- sampling

    def frame_indices(self, i: int, epoch: int | None = None) -> np.ndarray:
        """The rgb frame indices of sample i, int64 (N*K,) (the same for every view)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, int(i), 0]) if self.role == "train" else None
        return self.clip.indices(int(self._len[i]), rng)

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
        epoch = self.epoch
        idx = self.frame_indices(i, epoch)
        shared = None
        if self.augment and self.augmentation.shared_crop:
            shared = draw_box(np.random.default_rng([self.seed, epoch, i, 2]), self.augmentation)
        out = {}
        for v in self.views:
            images, inverse, shape = self._images(v, i, self._own_frames(v, i, idx))
            out.update(self._view(v, images, inverse, shape, i, epoch, shared))
        out.update(self._tail(i))
        return out

    def _view(self, view: str, images, inverse, shape, i: int, epoch: int, shared) -> dict:
        """The uint8 canvas of one view of sample i and its augmentation parameters. Integer work only:
        the crop copied to the canvas origin (or, when the canvas cannot hold it or it shrinks by 1.5x or
        more both ways, resized by OpenCV to the input size), the rest of the canvas zeroed; resampling,
        flip, colour and normalisation are described, and done by Finish. `shared`: the sample's
        draw_box for all views (Augmentation.shared_crop) or None."""
        (colour, flips, _), size, aug = self._aug_rules[view], self.sizes[view], self.augmentation
        h, w, c = shape
        hc, wc = self._canvas[view]
        canvas = np.empty((len(inverse), hc, wc, c), np.uint8)
        out = {}
        flip = False
        if not self.augment:
            canvas[:, :size, :size] = reading.resized(images, inverse, centre_box(h, w, self.centre_crop), size, c)
            bh = bw = size
        else:
            rng = np.random.default_rng([self.seed, epoch, i, 1, zlib.crc32(view.encode("utf-8"))])
            area, ratio, ux, uy, flip = draw_box(rng, aug)
            if shared is not None:
                area, ratio, ux, uy, flip = shared
            intensity = self._intensity[view] if aug.intensity_crop and shared is None else None
            if intensity is not None:  # the original's flow/pose/seg crop: the most intense of a few squares
                box = intensity_box(images, inverse, intensity, rng)
            else:
                box = crop_box(h, w, area, ratio, ux, uy)
            bw, bh = box[2], box[3]
            if bh <= hc and bw <= wc and not area_shrink(bh, bw, size):
                reading.crop_into(images, inverse, box, canvas)
            else:
                canvas[:, :size, :size] = reading.resized(images, inverse, box, size, c)
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


class DenseClips(MultiViewClips):
    """Every test window of every video of a role, centre-cropped (docs/evaluation.md).

    Same arguments as MultiViewClips (augmentation off; role "test", or "train" with hold-out fraction 0
    for the whole training role), plus `window_stride` (see `dense_windows`) and `extra_blocks` (0 =
    none): also return that many blocks spread over the whole video, for block-level analyses (soft
    alignment).

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
        return self.clip.windows(int(self._len[i]), self.window_stride)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} videos")
        wins = self.windows(i)
        groups = {"": wins.reshape(-1)}
        if self.extra_blocks:
            groups["blocks/"] = clip_indices(int(self._len[i]), self.extra_blocks, self.block_len, self.stride, None)
        out = {}
        for v in self.views:
            wanted = {prefix: self._own_frames(v, i, idx) for prefix, idx in groups.items()}
            images, inverse, (h, w, c) = self._images(v, i, np.concatenate(list(wanted.values())))
            # each stored frame decoded, cropped and resized once
            box = centre_box(h, w, self.centre_crop)
            frames = reading.resized(images, np.arange(len(images)), box, self.sizes[v], c)
            start = 0
            for prefix, idx in wanted.items():
                sel = frames[inverse[start : start + len(idx)]]
                start += len(idx)
                nblocks = len(idx) // self.block_len
                t = reading.to_tensor(sel, nblocks, self.block_len, *self._norm[v])
                out[prefix + v] = t.reshape(len(wins), self.num_blocks, *t.shape[1:]) if prefix == "" else t
        out.update(self._tail(i))
        out["windows"] = torch.tensor(len(wins), dtype=torch.int64)
        return out
