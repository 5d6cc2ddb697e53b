"""Tests of cocon.data.shards: the HDF5 shard layout, ShardWriter / ShardReader round trips for every codec,
arbitrary frame indexing, atomic writes, format checks, pickling and byte-for-byte reproducibility."""

from __future__ import annotations

import json
import pickle

import cv2
import h5py
import numpy as np
import pytest

from cocon.data.shards import (
    FORMAT,
    FORMAT_VERSION,
    ShardFormatError,
    ShardReader,
    ShardWriter,
    encode_frames,
)
from cocon.provenance import dumps
from cocon.sources.records import VideoRecord, splits_to_json

ENCODINGS = {
    "raw": {"codec": "raw"},
    "raw-none": {"codec": "raw", "compression": "none"},
    "raw-gzip": {"codec": "raw", "compression": "gzip", "level": 4},
    "raw-lzf": {"codec": "raw", "compression": "lzf"},
    "png": {"codec": "png", "level": 3},
    "jpeg": {"codec": "jpeg", "quality": 90},
}
LOSSLESS = [k for k in ENCODINGS if k != "jpeg"]
CHANNELS = (1, 2, 3, 17)
ROOT_ATTRS = {"stage": "test", "params": {"b": [1, 2], "a": None}, "dataset": {"name": "t", "format": "csv"}}


def smooth_frames(t: int, h: int, w: int, c: int, seed: int = 0, noise: int = 3) -> np.ndarray:
    """uint8 (T, H, W, C): every channel a different smooth pattern (so a channel swap or a flipped
    stacking order shows), moving from frame to frame, with a little noise (lossless codecs must keep it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((t, h, w, c), np.uint8)
    for k in range(t):
        for ch in range(c):
            fx, fy, ph = 0.05 + 0.03 * ch, 0.07 + 0.02 * (c - ch), 0.4 * k + ch
            base = 127.5 + 100 * np.sin(fx * x + ph) * np.cos(fy * y - ph) + 6 * ch - 3 * c
            out[k, :, :, ch] = np.clip(base + rng.integers(-noise, noise + 1, (h, w)), 0, 255)
    return out


def record(i: int, **kw) -> VideoRecord:
    base = dict(
        video_id=f"class{i % 2}/v{i:03d}",
        path=f"/data/class{i % 2}/v{i:03d}.avi",
        label=f"class{i % 2}",
        label_index=i % 2,
        group=f"class{i % 2}_g{i // 2:02d}",
        splits={"1": "train", "2": "test"},
    )
    base.update(kw)
    return VideoRecord(**base)


def meta(i: int) -> dict:
    return {"fps": 25.0 + i, "orig_height": 240 + i, "orig_width": 320 + i, "orig_frames": 100 + i}


def write_shard(path, encoding: dict, videos: list[np.ndarray], failures=(), attrs=ROOT_ATTRS, shard="00007"):
    """Rows in order: each of `videos` (record i), then each failure (record len(videos)+j, reason)."""
    with ShardWriter(path, view="rgb", shard=shard, attrs=attrs, encoding=encoding) as w:
        for i, frames in enumerate(videos):
            w.add_video(record(i), encode_frames(frames, encoding), meta(i))
        for j, reason in enumerate(failures):
            w.add_failure(record(len(videos) + j), reason, meta(len(videos) + j))
    return path


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("enc", list(ENCODINGS))
def test_round_trip(tmp_path, enc, channels):
    videos = [smooth_frames(5, 24, 32, channels, seed=1), smooth_frames(3, 16, 20, channels, seed=2)]
    path = write_shard(tmp_path / "s.h5", ENCODINGS[enc], videos, failures=["broken"])
    r = ShardReader(path)
    assert r.ok_rows() == [0, 1]
    for row, want in enumerate(videos):
        got = r.read(row)
        assert got.dtype == np.uint8 and got.shape == want.shape
        if enc in LOSSLESS:
            np.testing.assert_array_equal(got, want)
        else:
            err = np.abs(got.astype(np.int16) - want.astype(np.int16))
            assert err.mean() < 3.0, err.mean()
            # a per-channel check: a channel swap or wrong stacking order would be far off
            assert err.mean(axis=(0, 1, 2)).max() < 4.0
        assert r.index[row]["channels"] == channels
    with pytest.raises(KeyError, match="broken"):
        r.read(2)
    r.close()


def test_jpeg_three_channels_keep_rgb_order(tmp_path):
    """Pure red / green / blue frames stay red / green / blue through jpeg (RGB in, RGB out)."""
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    for k in range(3):
        frames[k, :, :, k] = 255
    for enc in ("jpeg", "png"):
        r = ShardReader(write_shard(tmp_path / f"{enc}.h5", ENCODINGS[enc], [frames]))
        got = r.read(0).astype(int)
        for k in range(3):
            assert got[k, :, :, k].min() > 240 and np.delete(got[k], k, axis=2).max() < 15, (enc, k)


def test_stored_layout_raw(tmp_path):
    frames = smooth_frames(4, 12, 10, 3)
    path = write_shard(tmp_path / "s.h5", ENCODINGS["raw-gzip"], [frames])
    with h5py.File(path, "r") as h5:
        ds = h5["videos/00000"]
        assert ds.dtype == np.uint8 and ds.shape == (4, 12, 10, 3)
        assert ds.chunks == (1, 12, 10, 3)
        assert ds.compression == "gzip" and ds.compression_opts == 4
        np.testing.assert_array_equal(ds[()], frames)
        assert "offsets" not in h5
    with h5py.File(write_shard(tmp_path / "l.h5", ENCODINGS["raw-lzf"], [frames]), "r") as h5:
        assert h5["videos/00000"].compression == "lzf"
    with h5py.File(write_shard(tmp_path / "n.h5", ENCODINGS["raw"], [frames]), "r") as h5:
        assert h5["videos/00000"].compression is None


@pytest.mark.parametrize("channels", [1, 2, 3, 5])
def test_stored_layout_png_images_back_to_back(tmp_path, channels):
    """jpeg/png: one uint8 byte array of T images back to back, offsets (T+1,), and images with
    C != 3 stored as one grayscale image with the channels stacked vertically (C*H, W)."""
    frames = smooth_frames(3, 10, 14, channels)
    path = write_shard(tmp_path / "s.h5", ENCODINGS["png"], [frames])
    with h5py.File(path, "r") as h5:
        data, off = h5["videos/00000"][()], h5["offsets/00000"][()]
    assert data.dtype == np.uint8 and data.ndim == 1
    assert off.dtype == np.int64 and off.shape == (4,) and off[0] == 0 and off[-1] == data.size
    assert np.all(np.diff(off) > 0)
    for k in range(3):
        buf = data[off[k] : off[k + 1]]
        assert bytes(buf[:8]) == b"\x89PNG\r\n\x1a\n"
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if channels == 3:
            np.testing.assert_array_equal(img, frames[k][:, :, ::-1])  # stored BGR, as cv2 writes colour
        else:
            assert img.shape == (channels * 10, 14)
            for ch in range(channels):
                np.testing.assert_array_equal(img[ch * 10 : (ch + 1) * 10], frames[k, :, :, ch])


# ------------------------------------------------------------------ reading arbitrary frames


@pytest.mark.parametrize("enc", ["raw", "raw-gzip", "png", "jpeg"])
def test_read_arbitrary_indices(tmp_path, enc):
    frames = smooth_frames(12, 16, 24, 3, seed=3)
    r = ShardReader(write_shard(tmp_path / "s.h5", ENCODINGS[enc], [frames]))
    full = r.read(0)
    assert full.shape == frames.shape
    cases = [
        [5],
        [0, 11],  # far apart: read image by image
        [2, 3, 4],  # contiguous: one span read
        [9, 2, 7, 0],  # unsorted
        [3, 3, 1, 3, 1],  # repeats
        list(range(11, -1, -1)),  # reversed
        np.array([4, 10, 4], dtype=np.int32),
        range(0, 12, 5),
    ]
    for idx in cases:
        got = r.read(0, idx)
        want = full[np.asarray(list(idx), dtype=int)]
        assert got.shape == want.shape and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want, err_msg=str(list(idx)))
    empty = r.read(0, [])
    assert empty.shape == (0, 16, 24, 3) and empty.dtype == np.uint8
    for bad in ([12], [0, 12], [-1], [3, -2, 4], [100]):
        with pytest.raises(IndexError):
            r.read(0, bad)
    with pytest.raises(IndexError):  # a row that does not exist
        r.read(5)
    r.close()


# ------------------------------------------------------------------ index, attributes, failures


def test_index_table_attributes_and_failures(tmp_path):
    videos = [smooth_frames(4, 12, 16, 3, seed=1), smooth_frames(6, 8, 10, 3, seed=2)]
    path = write_shard(tmp_path / "s.h5", ENCODINGS["png"], videos, failures=["zero-byte file", "too short: 3 frames"])
    # the failures are appended after the videos here; interleave to check manifest order is kept
    with ShardWriter(tmp_path / "mixed.h5", "rgb", "00001", ROOT_ATTRS, ENCODINGS["raw"]) as w:
        w.add_failure(record(0), "file not found")
        w.add_video(record(1), encode_frames(videos[0], ENCODINGS["raw"]), meta(1))
        w.add_failure(record(2), "cannot be opened", meta(2))
        w.add_video(record(3), encode_frames(videos[1], ENCODINGS["raw"]), meta(3))

    r = ShardReader(path)
    a = r.attrs
    assert a["format"] == FORMAT and a["format_version"] == FORMAT_VERSION
    assert (a["view"], a["shard"], a["complete"]) == ("rgb", "00007", True)
    assert (a["n_videos"], a["n_ok"], a["n_failed"]) == (4, 2, 2)
    assert a["stage"] == "test"
    assert a["params"] == dumps(ROOT_ATTRS["params"]) and json.loads(a["params"]) == ROOT_ATTRS["params"]
    assert json.loads(a["dataset"]) == ROOT_ATTRS["dataset"]

    assert [row["video_id"] for row in r.index] == [record(i).video_id for i in range(4)]
    assert [row["status"] for row in r.index] == ["ok", "ok", "failed", "failed"]
    assert [row["reason"] for row in r.index] == ["", "", "zero-byte file", "too short: 3 frames"]
    for i, row in enumerate(r.index):
        rec = record(i)
        assert (row["path"], row["label"], row["label_index"], row["group"]) == (
            rec.path,
            rec.label,
            rec.label_index,
            rec.group,
        )
        assert row["splits"] == splits_to_json(rec.splits) and json.loads(row["splits"]) == rec.splits
        m = meta(i)
        assert (row["fps"], row["orig_height"], row["orig_width"], row["orig_frames"]) == (
            m["fps"],
            m["orig_height"],
            m["orig_width"],
            m["orig_frames"],
        )
    assert [(row["n_frames"], row["height"], row["width"], row["channels"]) for row in r.index] == [
        (4, 12, 16, 3),
        (6, 8, 10, 3),
        (0, 0, 0, 0),
        (0, 0, 0, 0),
    ]
    assert r.failures() == [(record(2).video_id, "zero-byte file"), (record(3).video_id, "too short: 3 frames")]

    va = r.video_attrs(1)
    assert va["video_id"] == record(1).video_id and va["source_path"] == record(1).path
    assert (va["label"], va["label_index"], va["group"]) == (record(1).label, 1, record(1).group)
    assert json.loads(va["splits"]) == record(1).splits
    assert json.loads(va["shape"]) == [6, 8, 10, 3] and va["codec"] == "png" and va["n_frames"] == 6
    assert (va["fps"], va["orig_height"], va["orig_width"], va["orig_frames"]) == (26.0, 241, 321, 101)
    r.close()

    with h5py.File(path, "r") as h5:  # the stored tables themselves
        assert sorted(h5["index"]) == sorted(
            [
                "video_id",
                "path",
                "label",
                "label_index",
                "group",
                "splits",
                "status",
                "reason",
                "n_frames",
                "height",
                "width",
                "channels",
                "fps",
                "orig_height",
                "orig_width",
                "orig_frames",
            ]
        )
        assert h5["index/n_frames"].dtype == np.int64 and h5["index/fps"].dtype == np.float64
        assert [s.decode() for s in h5["failures/video_id"][()]] == [record(2).video_id, record(3).video_id]
        assert [s.decode() for s in h5["failures/reason"][()]] == ["zero-byte file", "too short: 3 frames"]
        assert sorted(h5["videos"]) == ["00000", "00001"]  # failed rows have no frames

    m = ShardReader(tmp_path / "mixed.h5")
    assert [row["status"] for row in m.index] == ["failed", "ok", "failed", "ok"]
    assert m.ok_rows() == [1, 3]
    assert m.failures() == [(record(0).video_id, "file not found"), (record(2).video_id, "cannot be opened")]
    np.testing.assert_array_equal(m.read(1), videos[0])
    np.testing.assert_array_equal(m.read(3), videos[1])
    with pytest.raises(KeyError, match="file not found"):
        m.read(0)
    assert m.index[2]["fps"] == meta(2)["fps"] and m.index[0]["fps"] == 0.0


def test_shard_with_failures_only(tmp_path):
    path = write_shard(tmp_path / "s.h5", ENCODINGS["jpeg"], [], failures=["a", "b"])
    r = ShardReader(path)
    assert r.ok_rows() == [] and [f[1] for f in r.failures()] == ["a", "b"]
    assert (r.attrs["n_ok"], r.attrs["n_failed"]) == (0, 2)


# ------------------------------------------------------------------ atomicity and format checks


def test_exception_inside_block_leaves_no_file(tmp_path):
    out = tmp_path / "sub" / "s.h5"
    frames = smooth_frames(3, 8, 8, 3)
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(out, "rgb", "00000", ROOT_ATTRS, ENCODINGS["png"]) as w:
            w.add_video(record(0), encode_frames(frames, ENCODINGS["png"]), meta(0))
            assert w.partial.exists() and not out.exists()
            raise RuntimeError("boom")
    assert not out.exists()
    assert not out.with_name("s.h5.partial").exists()
    assert list(out.parent.iterdir()) == []


def test_file_appears_only_on_close_and_stale_partial_is_replaced(tmp_path):
    out = tmp_path / "s.h5"
    partial = tmp_path / "s.h5.partial"
    partial.write_bytes(b"left over by a killed job")
    with ShardWriter(out, "rgb", "00000", ROOT_ATTRS, ENCODINGS["raw"]) as w:
        w.add_video(record(0), encode_frames(smooth_frames(2, 8, 8, 1), ENCODINGS["raw"]), meta(0))
        w.h5.flush()
        assert not out.exists() and partial.exists()
        # a reader given the partial file refuses it: `complete` is still False
        with pytest.raises(ShardFormatError):
            ShardReader(partial)
    assert out.exists() and not partial.exists()
    assert ShardReader(out).attrs["complete"] is True


def _copy_with(tmp_path, src, name, **attrs):
    dst = tmp_path / name
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as h5:
        for k, v in attrs.items():
            h5.attrs[k] = v
    return dst


def test_reader_rejects_incomplete_or_foreign_files(tmp_path):
    good = write_shard(tmp_path / "good.h5", ENCODINGS["raw"], [smooth_frames(2, 8, 8, 3)])
    ShardReader(good)
    for name, attrs, words in [
        ("incomplete.h5", {"complete": False}, "not a complete"),
        ("foreign.h5", {"format": "something-else"}, "not a complete"),
        ("future.h5", {"format_version": FORMAT_VERSION + 1}, "format_version"),
    ]:
        with pytest.raises(ShardFormatError, match=words):
            ShardReader(_copy_with(tmp_path, good, name, **attrs))
    with h5py.File(tmp_path / "plain.h5", "w") as h5:  # an HDF5 file with none of our attributes
        h5["x"] = np.arange(3)
    with pytest.raises(ShardFormatError):
        ShardReader(tmp_path / "plain.h5")
    assert issubclass(ShardFormatError, ValueError)


def test_reader_rejects_truncated_or_non_hdf5_file_with_shard_format_error(tmp_path):
    good = write_shard(tmp_path / "good.h5", ENCODINGS["raw"], [smooth_frames(4, 16, 16, 3)])
    data = good.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.h5").write_bytes(b"this is not an HDF5 file\n")
    for name in ("cut.h5", "text.h5"):
        with pytest.raises(ShardFormatError, match=name):  # and the message names the file
            ShardReader(tmp_path / name)


def test_failing_constructor_leaves_no_partial_file(tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(TypeError):
        with ShardWriter(out, "rgb", "00000", {"params": {"bad": {1, 2}}}, ENCODINGS["raw"]):
            pass
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ pickling (DataLoader workers)


@pytest.mark.parametrize("enc", ["raw-gzip", "jpeg"])
def test_pickled_reader_after_reading_works(tmp_path, enc):
    videos = [smooth_frames(6, 12, 16, 3, seed=1), smooth_frames(4, 12, 16, 2, seed=2)]
    r = ShardReader(write_shard(tmp_path / "s.h5", ENCODINGS[enc], videos, failures=["x"]))
    before = [r.read(0, [5, 0, 2]), r.read(1)]  # opens the file and fills the offsets cache
    clone = pickle.loads(pickle.dumps(r))
    assert clone.index == r.index and clone.attrs == r.attrs and clone._h5 is None
    np.testing.assert_array_equal(clone.read(0, [5, 0, 2]), before[0])
    np.testing.assert_array_equal(clone.read(1), before[1])
    np.testing.assert_array_equal(clone.read(0), r.read(0))
    clone2 = pickle.loads(pickle.dumps(clone))  # pickling an already unpickled reader works too
    np.testing.assert_array_equal(clone2.read(1, [3, 3]), before[1][[3, 3]])
    # the original keeps working, and both can be closed independently
    clone.close()
    np.testing.assert_array_equal(r.read(0, [2, 5]), before[0][[2, 0]])
    r.close()
    clone2.close()


# ------------------------------------------------------------------ reproducibility


@pytest.mark.parametrize("enc", list(ENCODINGS))
def test_identical_writes_are_byte_identical(tmp_path, enc):
    videos = [smooth_frames(4, 12, 16, 3, seed=1), smooth_frames(3, 10, 8, 2, seed=2)]
    a = write_shard(tmp_path / "a.h5", ENCODINGS[enc], videos, failures=["zero-byte file"])
    b = write_shard(tmp_path / "b.h5", ENCODINGS[enc], videos, failures=["zero-byte file"])
    assert a.read_bytes() == b.read_bytes()


def test_forked_child_opens_its_own_handle(tmp_path):
    """A reader used before fork (DataLoader with fork workers) reopens the file in the child."""
    import multiprocessing as mp

    frames = smooth_frames(5, 16, 16, 3)
    path = write_shard(tmp_path / "s.h5", ENCODINGS["raw"], [frames])
    reader = ShardReader(path)
    parent_handle = reader._file()
    reader.read(0, [1])
    global _FORK_READER
    _FORK_READER = reader  # inherited by the forked child as is, open handle included (not pickled)
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        reopened, x = pool.apply(_read_inherited_reader)
    _FORK_READER = None
    assert reopened and np.array_equal(x, frames[[2, 3]])
    assert reader._file() is parent_handle  # the parent's handle is untouched


_FORK_READER = None


def _read_inherited_reader():
    import os

    inherited = _FORK_READER._h5
    x = _FORK_READER.read(0, [2, 3])
    return _FORK_READER._h5 is not inherited and _FORK_READER._pid == os.getpid(), x
