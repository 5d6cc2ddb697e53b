"""HDF5 shards: one file per (view, shard) holding every video of the shard. Spec: docs/shards.md.

Layout (format_version 1)::

    /                 attrs: format, format_version, view, shard, dataset, params, config,
                             code_revision, library_versions, n_videos, n_ok, n_failed, complete
    /index/<column>   one row per video of the shard, in manifest order (ok and failed alike):
                      video_id, path, label, label_index, group, splits, status, reason, n_frames,
                      height, width, channels, fps, orig_height, orig_width, orig_frames
    /failures/<col>   video_id, reason: the failed rows only (a convenience copy of /index)
    /videos/<row>     frames of index row <row> (5 digits), status "ok" rows only
                      codec raw:       uint8 (T, H, W, C), chunked per frame, optional gzip/lzf
                      codec jpeg/png:  uint8 (total bytes,), the T encoded images back to back
    /offsets/<row>    jpeg/png only: int64 (T + 1,); image k is videos/<row>[offsets[k]:offsets[k+1]]

Frames are channels-last uint8; RGB order for the rgb view. Images with 2 or more than 3 channels
(flow u/v, heatmaps) are encoded as one grayscale image with the channels stacked vertically.

A shard is written under `<name>.partial` and renamed when complete, so a file with the final name is
always whole; its root attribute `complete` is True as a second check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np

from cocon.files import partial_path
from cocon.provenance import dumps
from cocon.sources.records import VideoRecord, splits_to_json

FORMAT = "cocon-shard"
FORMAT_VERSION = 1
STR = h5py.string_dtype("utf-8")
_INDEX_STR = ("video_id", "path", "label", "group", "splits", "status", "reason")
_INDEX_INT = ("label_index", "n_frames", "height", "width", "channels", "orig_height", "orig_width", "orig_frames")
_INDEX_FLOAT = ("fps",)


class ShardFormatError(ValueError):
    """A file that is not a complete cocon shard of a supported version."""


# ---------------------------------------------------------------- codecs


@dataclass
class EncodedFrames:
    """Frames of one video ready to be stored: `data` is a uint8 array (raw) or a list of encoded
    images (jpeg/png); `shape` is the decoded (T, H, W, C)."""

    shape: tuple[int, int, int, int]
    codec: str
    data: object


def _to_image(frame: np.ndarray) -> np.ndarray:
    """(H, W, C) -> what cv2.imencode takes: BGR for C=3, else channels stacked into (C*H, W)."""
    c = frame.shape[2]
    if c == 3:
        return cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    if c == 1:
        return frame[:, :, 0]
    return np.ascontiguousarray(frame.transpose(2, 0, 1).reshape(c * frame.shape[0], frame.shape[1]))


def encode_frames(frames: np.ndarray, encoding: dict) -> EncodedFrames:
    """Encode uint8 frames (T, H, W, C) with `encoding` ({codec: jpeg|png|raw, ...}). Thread-safe."""
    if frames.dtype != np.uint8 or frames.ndim != 4:
        raise ValueError(f"expected uint8 (T, H, W, C) frames, got {frames.dtype} {frames.shape}")
    codec = encoding["codec"]
    if codec == "raw":
        return EncodedFrames(frames.shape, codec, np.ascontiguousarray(frames))
    if codec == "jpeg":
        ext, opts = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(encoding.get("quality", 90))]
    elif codec == "png":
        ext, opts = ".png", [cv2.IMWRITE_PNG_COMPRESSION, int(encoding.get("level", 1))]
    else:
        raise ValueError(f"unknown codec {codec!r}")
    out = []
    for f in frames:
        ok, buf = cv2.imencode(ext, _to_image(f), opts)
        if not ok:
            raise RuntimeError(f"cv2.imencode({ext}) failed for a frame of shape {f.shape}")
        out.append(buf.reshape(-1))
    return EncodedFrames(frames.shape, codec, out)


def decode_image(buf: np.ndarray, shape: tuple[int, int, int], out: np.ndarray | None = None) -> np.ndarray:
    """One stored jpeg/png image -> (H, W, C) uint8, written into `out` when given."""
    h, w, c = shape
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR_RGB if c == 3 else cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ShardFormatError("a stored image could not be decoded")
    if c == 1:
        img = img.reshape(h, w, 1)
    elif c != 3:  # planes stacked vertically -> channels last; cv2.merge is ~2x faster than a numpy transpose copy
        planes = img.reshape(c, h, w)
        img = cv2.merge([planes[k] for k in range(c)]).reshape(h, w, c)
    if out is None:
        return img
    out[...] = img
    return out


# ---------------------------------------------------------------- writer


class ShardWriter:
    """Writes one shard atomically. Use as a context manager::

        with ShardWriter(out, view="rgb", shard="00003", attrs={...}, encoding={...}) as w:
            w.add_video(record, encoded, meta)      # in manifest order
            w.add_failure(record, "zero-byte file")
        # -> `out` exists only now, complete

    `attrs` are root attributes (values JSON-encoded unless str/int/float/bool); `meta` per video:
    fps, orig_height, orig_width, orig_frames, plus view-specific keys stored as dataset attributes.
    On an exception the partial file is removed and nothing appears under the final name.
    """

    def __init__(self, path: str | Path, view: str, shard: str, attrs: dict, encoding: dict):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.encoding = dict(encoding)
        self.rows: list[dict] = []
        root = {"format": FORMAT, "format_version": FORMAT_VERSION, "view": view, "shard": shard, **attrs}
        encoded = {key: _attr(root[key]) for key in sorted(root)}  # fails before any file exists
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial.unlink(missing_ok=True)
        self.h5 = h5py.File(self.partial, "w")
        try:
            for key, value in encoded.items():
                self.h5.attrs[key] = value
            self.h5.attrs["complete"] = False
            self.videos = self.h5.create_group("videos")
        except BaseException:
            self.abort()
            raise

    def add_video(self, rec: VideoRecord, enc: EncodedFrames, meta: dict) -> None:
        t, h, w, c = enc.shape
        name = f"{len(self.rows):05d}"
        if enc.codec == "raw":
            comp = self.encoding.get("compression", "none")
            kw = {} if comp == "none" else {"compression": comp}
            if comp == "gzip":
                kw["compression_opts"] = int(self.encoding.get("level", 1))
            ds = self.videos.create_dataset(name, data=enc.data, chunks=(1, h, w, c), **kw)
        else:
            offsets = np.zeros(t + 1, np.int64)
            np.cumsum([len(b) for b in enc.data], out=offsets[1:])
            ds = self.videos.create_dataset(
                name, data=np.concatenate(enc.data), chunks=(min(int(offsets[-1]), 1 << 16),)
            )
            self.h5.require_group("offsets").create_dataset(name, data=offsets)
        row = _row(rec, "ok", "", meta, n_frames=t, height=h, width=w, channels=c)
        attrs = {
            "video_id": rec.video_id,
            "source_path": rec.path,
            "label": rec.label,
            "label_index": rec.label_index,
            "group": rec.group,
            "splits": splits_to_json(rec.splits),
            "shape": [t, h, w, c],
            "codec": enc.codec,
            "n_frames": t,
            **{k: v for k, v in meta.items()},
        }
        for key in sorted(attrs):
            ds.attrs[key] = _attr(attrs[key])
        self.rows.append(row)

    def add_failure(self, rec: VideoRecord, reason: str, meta: dict | None = None) -> None:
        self.rows.append(_row(rec, "failed", reason, meta or {}))

    def close(self) -> None:
        idx = self.h5.create_group("index")
        for col in _INDEX_STR:
            idx.create_dataset(col, data=[r[col] for r in self.rows], dtype=STR)
        for col in _INDEX_INT:
            idx.create_dataset(col, data=np.array([r[col] for r in self.rows], dtype=np.int64))
        for col in _INDEX_FLOAT:
            idx.create_dataset(col, data=np.array([r[col] for r in self.rows], dtype=np.float64))
        failed = [r for r in self.rows if r["status"] != "ok"]
        fl = self.h5.create_group("failures")
        fl.create_dataset("video_id", data=[r["video_id"] for r in failed], dtype=STR)
        fl.create_dataset("reason", data=[r["reason"] for r in failed], dtype=STR)
        self.h5.attrs["n_videos"] = len(self.rows)
        self.h5.attrs["n_ok"] = len(self.rows) - len(failed)
        self.h5.attrs["n_failed"] = len(failed)
        self.h5.attrs["complete"] = True
        self.h5.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        try:
            self.h5.close()
        finally:
            self.partial.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def _attr(value):
    if isinstance(value, (str, bool, int, float, np.integer, np.floating)):
        return value
    return dumps(value)


def _row(rec: VideoRecord, status: str, reason: str, meta: dict, **sizes) -> dict:
    row = {
        "video_id": rec.video_id,
        "path": rec.path,
        "label": rec.label,
        "label_index": rec.label_index,
        "group": rec.group,
        "splits": splits_to_json(rec.splits),
        "status": status,
        "reason": reason,
        "n_frames": 0,
        "height": 0,
        "width": 0,
        "channels": 0,
        "fps": float(meta.get("fps", 0.0)),
        "orig_height": int(meta.get("orig_height", 0)),
        "orig_width": int(meta.get("orig_width", 0)),
        "orig_frames": int(meta.get("orig_frames", 0)),
    }
    row.update(sizes)
    return row


# ---------------------------------------------------------------- reader


class ShardReader:
    """Reads a shard. The HDF5 file is opened lazily on first frame access, so a reader can be
    created in the main process and used inside DataLoader workers (each opens its own handle).

    `index` is a list of dicts, one per video (see layout); `read(row, frames)` returns uint8
    (len(frames), H, W, C) for any frame indices (repeats and any order allowed)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._h5 = None
        self._pid = None
        try:
            h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise ShardFormatError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        with h5:
            self.attrs = {k: _plain(v) for k, v in h5.attrs.items()}
            if self.attrs.get("format") != FORMAT or not self.attrs.get("complete"):
                raise ShardFormatError(f"{self.path}: not a complete {FORMAT} file")
            if self.attrs.get("format_version") != FORMAT_VERSION:
                raise ShardFormatError(f"{self.path}: format_version {self.attrs.get('format_version')} unsupported")
            cols = {k: h5["index"][k][()] for k in h5["index"]}
        n = len(cols["video_id"])
        self.index = [{k: _plain(cols[k][i]) for k in cols} for i in range(n)]

    def __getstate__(self):
        return {
            "path": self.path,
            "attrs": self.attrs,
            "index": self.index,
            "_h5": None,
            "_pid": None,
            "_offset_cache": {},
        }

    def _file(self) -> h5py.File:
        """The HDF5 handle of this process: a handle inherited through fork is never reused."""
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def ok_rows(self) -> list[int]:
        return [i for i, r in enumerate(self.index) if r["status"] == "ok"]

    def failures(self) -> list[tuple[str, str]]:
        return [(r["video_id"], r["reason"]) for r in self.index if r["status"] != "ok"]

    def read(self, row: int, frames=None) -> np.ndarray:
        meta = self.index[row]
        if meta["status"] != "ok":
            raise KeyError(f"{self.path}: video {meta['video_id']} failed: {meta['reason']}")
        ds = self._file()["videos"][f"{row:05d}"]
        t = meta["n_frames"]
        want = np.arange(t) if frames is None else np.asarray(frames, dtype=np.int64)
        if want.size and (want.min() < 0 or want.max() >= t):
            raise IndexError(f"frame index out of range 0..{t - 1} for {meta['video_id']}")
        uniq, inverse = np.unique(want, return_inverse=True)
        shape = (meta["height"], meta["width"], meta["channels"])
        if not uniq.size:
            return np.empty((0, *shape), np.uint8)
        got = np.empty((uniq.size, *shape), np.uint8)
        if ds.ndim == 4:  # raw: one chunk per frame; h5py's fancy indexing is slow, read frame by frame
            for j, i in enumerate(uniq):
                got[j] = ds[int(i)]
        else:
            off = self._offsets(row)
            lo, hi = int(off[uniq[0]]), int(off[uniq[-1] + 1])
            needed = int(np.sum(off[uniq + 1] - off[uniq]))
            if hi - lo <= 4 * needed:  # one contiguous read covers the clip cheaply
                span = ds[lo:hi]
                bufs = [span[off[i] - lo : off[i + 1] - lo] for i in uniq]
            else:
                bufs = [ds[int(off[i]) : int(off[i + 1])] for i in uniq]
            for j, b in enumerate(bufs):
                decode_image(b, shape, got[j])
        return got if uniq.size == want.size and np.array_equal(uniq, want) else got[inverse]

    def _offsets(self, row: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_offset_cache", {})
        if row not in cache:
            cache[row] = self._file()["offsets"][f"{row:05d}"][()]
        return cache[row]

    def video_attrs(self, row: int) -> dict:
        return {k: _plain(v) for k, v in self._file()["videos"][f"{row:05d}"].attrs.items()}

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def _plain(v):
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    return v
