"""Reading the loader's frames from the HDF5 shards (docs/loader.md, "Reading"): light readers that
pickle into DataLoader workers, the per-video byte offsets read once when a dataset is built, decoding
each distinct frame once, a per-process LRU of open files, and the uint8 crops and OpenCV resizes of
the workers. Frames are uint8 (H, W, C), channels last; clips uint8 (T, H, W, C)."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import cv2
import h5py
import numpy as np
import torch

from cocon.data.augment import area_shrink
from cocon.data.index import ClipsError
from cocon.data.shards import ShardFormatError, ShardReader

__all__ = [
    "SlimIndex",
    "ClipReader",
    "OpenFiles",
    "read_offsets",
    "load_offsets",
    "video_offsets",
    "read_frames",
    "crop_into",
    "crop_resize",
    "resized",
    "to_tensor",
]


class SlimIndex:
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


class ClipReader(ShardReader):
    """A ShardReader made from a full one, with the slim index (pickles light), and the loader's read
    path: `images(row, frames, offsets)` decodes each distinct frame once, to (H, W, C), using the
    byte offsets the dataset read once per shard (no per-sample /offsets lookup)."""

    def __init__(self, full: ShardReader):  # no super().__init__(): it would re-read the index
        self.path = full.path
        self.attrs = full.attrs
        self.index = SlimIndex(full.index)
        self._h5 = None
        self._pid = None

    def close(self) -> None:
        super().close()
        self.__dict__.pop("_offset_cache", None)

    def shape(self, row: int) -> tuple[int, int, int]:
        """(H, W, C) of the row's frames."""
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


class OpenFiles:
    """Per-process LRU of the readers in use: at most `limit` stay open (a Kinetics-size dataset has more
    shard files than the usual open-file limit). A copy inherited through fork or pickled into a worker
    starts empty: those handles are not its own to close."""

    def __init__(self, limit: int = 64):
        self.limit = int(limit)
        self._lru: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self):
        return {"limit": self.limit, "_lru": OrderedDict(), "_pid": None}

    def use(self, key, reader):
        """Count `reader` (under `key`) as the most recently used, closing the least recent beyond the limit."""
        if self._pid != os.getpid():
            self._lru, self._pid = OrderedDict(), os.getpid()
        self._lru[key] = reader
        self._lru.move_to_end(key)
        while len(self._lru) > self.limit:
            _, old = self._lru.popitem(last=False)
            old.close()
        return reader


def read_offsets(path: str, rows: Sequence[int]) -> list[np.ndarray] | None:
    """The /offsets/<row> arrays (int64 (T + 1,) byte offsets) of `rows` of one shard, one file open
    (None for a raw shard)."""
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


def load_offsets(view: str, readers: Sequence[ShardReader], shard: np.ndarray, row: np.ndarray):
    """Byte offsets of videos i = (shard[i], row[i]) of a jpeg/png view, read once per shard (one file
    open, one small read per video): (flat int64 tensor, start int64 (len + 1,)), video i's offsets being
    flat[start[i]:start[i + 1]]; None for raw views. A tensor, so that the DataLoader hands it to its
    workers through shared memory."""
    n = len(row)
    got: list = [None] * n
    for s in np.unique(shard):
        where = np.flatnonzero(shard == s)
        offs = read_offsets(readers[int(s)].path, row[where])
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


def video_offsets(table, i: int) -> np.ndarray | None:
    """Video i's int64 (T + 1,) byte offsets from a `load_offsets` table (None for raw views)."""
    if table is None:
        return None
    flat, start = table
    return flat[int(start[i]) : int(start[i + 1])].numpy()


def read_frames(reader, row: int, own: np.ndarray, offsets: np.ndarray | None) -> tuple[list, np.ndarray, tuple]:
    """Frames `own` (the view's own indices, int64 (T,)) of a row: the distinct frames decoded (uint8
    (H, W, C) each), the position of each wanted frame among them (int64 (T,)), and (H, W, C)."""
    uniq, inverse = np.unique(own, return_inverse=True)
    n_own = int(reader.index.cols["n_frames"][row])
    if uniq.size and (uniq[0] < 0 or uniq[-1] >= n_own):
        raise IndexError(f"frame index out of range 0..{n_own - 1} for row {row} of {reader.path}")
    return reader.images(row, uniq, offsets), inverse.reshape(-1), reader.shape(row)


def crop_into(images: list[np.ndarray], inverse: np.ndarray, box, out: np.ndarray) -> np.ndarray:
    """Copy the `box` (x0, y0, bw, bh) of frame t = images[inverse[t]] ((H, W, C) each) into
    out[t, :bh, :bw] (uint8 (T, >= bh, >= bw, C)); returns `out`."""
    x0, y0, bw, bh = box
    for t, j in enumerate(inverse):
        out[t, :bh, :bw] = images[j][y0 : y0 + bh, x0 : x0 + bw]
    return out


def crop_resize(frames: np.ndarray, box, size: int) -> np.ndarray:
    """uint8 (T, H, W, C) -> (T, size, size, C): crop `box` (x0, y0, bw, bh) then resize with OpenCV
    (bilinear; area when the crop shrinks by 1.5x or more in both directions). The evaluation crop, and
    the training crops that the canvas cannot hold."""
    x0, y0, bw, bh = box
    crop = frames[:, y0 : y0 + bh, x0 : x0 + bw]
    t, c = frames.shape[0], frames.shape[3]
    if bw == size and bh == size:
        return np.ascontiguousarray(crop)
    interp = cv2.INTER_AREA if area_shrink(bh, bw, size) else cv2.INTER_LINEAR
    out = np.empty((t, size, size, c), np.uint8)
    for k in range(t):
        if c <= 4:
            out[k] = cv2.resize(crop[k], (size, size), interpolation=interp).reshape(size, size, c)
            continue
        for c0 in range(0, c, 4):  # OpenCV's area resize takes at most 4 channels (pose has 17)
            part = np.ascontiguousarray(crop[k, ..., c0 : c0 + 4])
            out[k, ..., c0 : c0 + 4] = cv2.resize(part, (size, size), interpolation=interp).reshape(size, size, -1)
    return out


def resized(images: list[np.ndarray], inverse: np.ndarray, box, size: int, c: int) -> np.ndarray:
    """The `box` of frames images[inverse[t]] resized to uint8 (T, size, size, c) (`crop_resize`)."""
    x0, y0, bw, bh = box
    crop = crop_into(images, inverse, box, np.empty((len(inverse), bh, bw, c), np.uint8))
    return crop_resize(crop, (0, 0, bw, bh), size)


def to_tensor(frames: np.ndarray, n: int, k: int, scale: np.ndarray, offset: np.ndarray) -> torch.Tensor:
    """uint8 (N*K, H, W, C) (any strides) -> float32 tensor (N, C, K, H, W), x * scale + offset per channel."""
    _, h, w, c = frames.shape
    src = frames.reshape(n, k, h, w, c).transpose(0, 4, 1, 2, 3)
    out = np.empty((n, c, k, h, w), np.float32)
    np.multiply(src, scale.reshape(1, c, 1, 1, 1), out=out)
    out += offset.reshape(1, c, 1, 1, 1)
    return torch.from_numpy(out)
