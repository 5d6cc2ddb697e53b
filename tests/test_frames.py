"""Tests of the frames stage (cocon.preprocess.frames) on real encoded videos: good ones are decoded, resized and
stored exactly as OpenCV decodes them; every kind of bad video becomes a failure with its reason, in the
shard and in the job's log, without stopping the good videos of the same shard."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest

from cocon.data.shards import ShardReader
from cocon.preprocess import frames
from cocon.provenance import code_revision, dumps, library_versions
from cocon.sources.records import (
    VideoRecord,
    read_manifest,
    splits_to_json,
    write_manifest,
)

from conftest import run_cocon, stage_config

GOOD = ("avi", "mp4", "tall")  # names of the `videos` fixture (tests/conftest.py)
BAD = ("zero", "garbage", "truncated", "short", "missing")

DATASET = {"name": "testset", "format": "csv"}
PARAMS = {"short_side": 32, "interpolation": "area", "max_frames": None, "min_frames": 8, "encoding": {"codec": "raw"}}
# (H, W) after resizing to short side 32: 64x48 and 96x72 -> 43x32 (42.67 rounded); portrait 48x64 -> 32x43
EXPECTED_HW = {"avi": (32, 43), "mp4": (32, 43), "tall": (43, 32)}
# shard 00000 mixes good and bad videos; shard 00001 holds one more good video
ORDER = ["avi", "zero", "mp4", "garbage", "truncated", "tall", "short", "missing"]
REASONS = {
    "zero": "zero-byte file",
    "garbage": "cannot be opened: not a video, or an unsupported container or codec",
    "short": "too short: 3 frames, fewer than frames.min_frames=8",
    "missing": "file not found",
}


def vid(name: str) -> str:
    return f"{'walk' if name in ('avi', 'tall', 'zero', 'short') else 'jump'}/{name}"


@pytest.fixture(scope="module")
def manifest(videos, make_manifest, tmp_path_factory):
    path = tmp_path_factory.mktemp("manifest") / "manifest.tsv"
    pairs = [(vid(n), videos[n].path) for n in ORDER] + [("jump/other", videos["truncated_source"].path)]
    shards = make_manifest(path, pairs, per_shard=len(ORDER))
    assert [len(s) for s in shards] == [len(ORDER), 1]
    return {"path": str(path), "records": {r.video_id: r for r in shards[0] + shards[1]}}


@pytest.fixture(scope="module")
def rgb(manifest, tmp_path_factory):
    """The raw-codec rgb shard 00000, written in-process with 2 threads."""
    out = tmp_path_factory.mktemp("rgb") / "00000.h5"
    failures = frames.run(manifest["path"], "00000", str(out), PARAMS, DATASET, threads=2)
    return {"path": out, "failures": failures, "reader": ShardReader(out)}


def row_of(reader: ShardReader, name: str) -> int:
    return [r["video_id"] for r in reader.index].index(vid(name))


def decode_bgr(path: str) -> np.ndarray:
    """Every frame OpenCV's FFmpeg backend decodes from `path`, BGR, with default decoder settings."""
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    cap.release()
    return np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


def expected_rgb(path: str, hw: tuple[int, int], interpolation=cv2.INTER_AREA) -> np.ndarray:
    """What the stage must store: every decoded frame, resized to (H, W), converted BGR -> RGB."""
    h, w = hw
    return np.stack(
        [cv2.cvtColor(cv2.resize(f, (w, h), interpolation=interpolation), cv2.COLOR_BGR2RGB) for f in decode_bgr(path)]
    )


# ------------------------------------------------------------------ good videos


def test_good_videos_complete_with_every_frame(rgb, videos):
    r = rgb["reader"]
    assert [row["video_id"] for row in r.index] == [vid(n) for n in ORDER]  # manifest order, shard 00000 only
    for name in GOOD:
        row = r.index[row_of(r, name)]
        n_direct = len(decode_bgr(videos[name].path))
        assert n_direct == videos[name].frames  # the fixture wrote that many, OpenCV decodes that many
        assert row["status"] == "ok" and row["reason"] == ""
        assert row["n_frames"] == n_direct
        assert (row["height"], row["width"], row["channels"]) == (*EXPECTED_HW[name], 3)
        assert min(row["height"], row["width"]) == PARAMS["short_side"]
        got = r.read(row_of(r, name))
        assert got.dtype == np.uint8 and got.shape == (n_direct, *EXPECTED_HW[name], 3)


def test_frames_equal_direct_opencv_decode_resize_rgb(rgb, videos):
    """Raw codec: stored frames are bit-identical to cv2 decode + INTER_AREA resize + BGR->RGB."""
    r = rgb["reader"]
    for name in GOOD:
        want = expected_rgb(videos[name].path, EXPECTED_HW[name])
        got = r.read(row_of(r, name))
        np.testing.assert_array_equal(got, want, err_msg=name)
        # the texture's channels differ, so this comparison does see the channel order
        assert np.abs(want[..., 0].astype(int) - want[..., 2]).mean() > 20
        assert not np.array_equal(got, want[..., ::-1])


def test_interpolation_parameter_is_used(tmp_path, videos, make_manifest):
    m = tmp_path / "m.tsv"
    make_manifest(m, [("walk/avi", videos["avi"].path)])
    out = tmp_path / "cubic.h5"
    frames.run(str(m), "00000", str(out), {**PARAMS, "interpolation": "cubic"}, DATASET)
    got = ShardReader(out).read(0)
    np.testing.assert_array_equal(got, expected_rgb(videos["avi"].path, EXPECTED_HW["avi"], cv2.INTER_CUBIC))
    assert not np.array_equal(got, expected_rgb(videos["avi"].path, EXPECTED_HW["avi"], cv2.INTER_AREA))


def test_attributes_record_source_and_provenance(rgb, videos, manifest):
    r = rgb["reader"]
    a = r.attrs
    assert (a["format"], a["view"], a["shard"], a["stage"], a["complete"]) == (
        "cocon-shard",
        "rgb",
        "00000",
        "frames",
        True,
    )
    assert (a["n_videos"], a["n_ok"], a["n_failed"]) == (len(ORDER), len(GOOD), len(BAD))
    assert a["params"] == dumps(PARAMS) and json.loads(a["params"]) == PARAMS
    assert json.loads(a["dataset"]) == DATASET
    rev = json.loads(a["code_revision"])
    assert rev == code_revision() and set(rev) == {"git", "dirty", "source_sha256"} and len(rev["source_sha256"]) == 64
    libs = json.loads(a["library_versions"])
    assert libs == library_versions()
    assert libs["cv2.__version__"] == cv2.__version__
    assert libs["numpy"] == np.__version__ and libs["h5py"] != "absent"

    for name in GOOD:
        clip, i = videos[name], row_of(r, name)
        rec = manifest["records"][vid(name)]
        va, row = r.video_attrs(i), r.index[i]
        assert va["video_id"] == rec.video_id and va["source_path"] == clip.path == row["path"]
        assert (va["label"], va["label_index"], va["group"]) == (rec.label, rec.label_index, rec.group)
        assert (row["label"], row["label_index"], row["group"]) == (rec.label, rec.label_index, rec.group)
        assert json.loads(va["splits"]) == rec.splits and row["splits"] == splits_to_json(rec.splits)
        assert va["fps"] == pytest.approx(25.0) and row["fps"] == pytest.approx(25.0)
        assert (
            (va["orig_height"], va["orig_width"])
            == (clip.height, clip.width)
            == (row["orig_height"], row["orig_width"])
        )
        assert va["orig_frames"] == clip.frames == row["orig_frames"]
        assert va["n_frames"] == clip.frames and json.loads(va["shape"]) == [clip.frames, *EXPECTED_HW[name], 3]
        assert va["codec"] == "raw"
    # the labels and splits really vary across the shard (so the checks above are not vacuous)
    assert len({manifest["records"][vid(n)].label_index for n in GOOD}) == 2
    assert len({splits_to_json(manifest["records"][vid(n)].splits) for n in GOOD}) > 1


def test_non_ascii_ids_and_odd_paths(tmp_path, videos):
    """UTF-8 ids/labels and a file name with spaces, a tab and '#' survive manifest -> shard."""
    odd = tmp_path / "vidéo ü\tx #1.avi"
    odd.write_bytes(open(videos["avi"].path, "rb").read())
    rec = VideoRecord("Ĉlass/vidéo ü", str(odd), "Ĉlass", 0, "", {"1": "train"})
    write_manifest(tmp_path / "m.tsv", [[rec]])
    assert read_manifest(tmp_path / "m.tsv") == [rec]
    out = tmp_path / "s.h5"
    assert frames.run(str(tmp_path / "m.tsv"), "00000", str(out), PARAMS, DATASET) == []
    r = ShardReader(out)
    assert (r.index[0]["video_id"], r.index[0]["label"], r.index[0]["path"]) == (rec.video_id, "Ĉlass", str(odd))
    assert r.video_attrs(0)["source_path"] == str(odd) and r.video_attrs(0)["video_id"] == rec.video_id
    assert r.index[0]["n_frames"] == videos["avi"].frames


# ------------------------------------------------------------------ bad videos


def test_bad_videos_are_failures_with_reasons(rgb, videos):
    r = rgb["reader"]
    got = dict(r.failures())
    assert list(got) == [vid(n) for n in ORDER if n in BAD]  # manifest order
    assert rgb["failures"] == r.failures()  # what run() returns is what the shard holds
    for name in BAD:
        reason = got[vid(name)]
        if name == "truncated":
            assert reason.startswith(videos["truncated"].reason + " its container declares"), reason
        else:
            assert reason == REASONS[name]
        row = r.index[row_of(r, name)]
        assert row["status"] == "failed" and row["reason"] == reason
        assert (row["n_frames"], row["height"], row["width"], row["channels"]) == (0, 0, 0, 0)
        assert row["path"] == videos[name].path
        with pytest.raises(KeyError):
            r.read(row_of(r, name))


def test_failures_are_logged(tmp_path, manifest, videos, caplog):
    caplog.set_level(logging.INFO, logger="cocon")
    failures = frames.run(manifest["path"], "00000", str(tmp_path / "s.h5"), PARAMS, DATASET, threads=1)
    text = caplog.text
    assert f"frames shard 00000: {len(GOOD)} ok, {len(BAD)} failed" in text
    for video_id, reason in failures:
        assert f"FAILED {video_id} [frames]: {reason}" in text
    warned = [rec for rec in caplog.records if rec.levelno == logging.WARNING and "FAILED" in rec.getMessage()]
    assert len(warned) == len(BAD)


def test_other_shard_only_holds_its_rows(tmp_path, manifest, videos):
    out = tmp_path / "00001.h5"
    assert frames.run(manifest["path"], "00001", str(out), PARAMS, DATASET) == []
    r = ShardReader(out)
    assert [row["video_id"] for row in r.index] == ["jump/other"] and r.attrs["shard"] == "00001"
    assert r.index[0]["n_frames"] == 30 and r.failures() == []


def test_shard_without_videos_is_an_error(tmp_path, manifest):
    out = tmp_path / "00009.h5"
    with pytest.raises(SystemExit, match="no videos in shard 00009"):
        frames.run(manifest["path"], "00009", str(out), PARAMS, DATASET)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ parameters


def test_max_frames_caps_frames(tmp_path, manifest, videos, rgb):
    out = tmp_path / "capped.h5"
    failures = dict(frames.run(manifest["path"], "00000", str(out), {**PARAMS, "max_frames": 9}, DATASET, threads=2))
    r = ShardReader(out)
    full = rgb["reader"]
    for name in GOOD:
        i = row_of(r, name)
        assert r.index[i]["n_frames"] == 9 and r.index[i]["orig_frames"] == videos[name].frames
        np.testing.assert_array_equal(r.read(i), full.read(row_of(full, name))[:9])  # the first 9 frames
    # a capped run still rejects the bad videos (the truncated one decodes fewer than 9 frames)
    assert set(failures) == {vid(n) for n in BAD}
    assert failures[vid("truncated")].startswith("truncated:")


# ------------------------------------------------------------------ reproducibility


def test_byte_identical_across_runs_and_threads(tmp_path, manifest, rgb):
    outs = []
    for k, threads in enumerate((1, 2, 1)):
        out = tmp_path / f"run{k}.h5"
        frames.run(manifest["path"], "00000", str(out), PARAMS, DATASET, threads=threads)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2] == rgb["path"].read_bytes()
    jpeg = {**PARAMS, "encoding": {"codec": "jpeg", "quality": 90}}
    a, b = tmp_path / "j1.h5", tmp_path / "j2.h5"
    frames.run(manifest["path"], "00000", str(a), jpeg, DATASET, threads=1)
    frames.run(manifest["path"], "00000", str(b), jpeg, DATASET, threads=2)
    assert a.read_bytes() == b.read_bytes()


# ------------------------------------------------------------------ command line


def test_cli_with_bad_videos_exits_zero(tmp_path, manifest, videos, rgb):
    out = tmp_path / "rgb" / "00000.h5"
    params = {**PARAMS, "encoding": {"codec": "jpeg", "quality": 90}}
    proc = run_cocon(
        "frames",
        *("--manifest", manifest["path"], "--shard", "00000", "--out", out),
        *("--config-json", stage_config("frames", params, DATASET), "--threads", "2"),
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and not (tmp_path / "rgb" / "00000.h5.partial").exists()
    r = ShardReader(out)
    assert r.attrs["params"] == dumps(params)
    failures = dict(r.failures())
    assert set(failures) == {vid(n) for n in BAD}
    log = proc.stderr
    assert f"frames shard 00000: {len(GOOD)} ok, {len(BAD)} failed" in log
    for name in BAD:
        reason = failures[vid(name)]
        assert f"FAILED {vid(name)} [frames]: {reason}" in log
        assert reason == rgb["reader"].index[row_of(rgb["reader"], name)]["reason"]
    full = rgb["reader"]
    for name in GOOD:  # jpeg frames close to the raw ones
        got, want = r.read(row_of(r, name)), full.read(row_of(full, name))
        assert got.shape == want.shape
        # tiny frames of a high-frequency colour texture: jpeg's chroma subsampling costs several levels
        # per channel, luma stays close (the jpeg colour order itself is checked in test_shards)
        luma = [np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in x]).astype(int) for x in (got, want)]
        assert np.abs(luma[0] - luma[1]).mean() < 4, name
        assert np.abs(got.astype(int) - want).mean() < 12, name


def test_cli_rejects_bad_arguments(tmp_path, manifest):
    proc = run_cocon(
        "frames",
        *("--manifest", manifest["path"], "--shard", "00000", "--out", tmp_path / "x.h5"),
        *("--config-json", "{not json"),
        timeout=120,
    )
    assert proc.returncode != 0 and "--config-json is not valid JSON" in proc.stderr
    assert not (tmp_path / "x.h5").exists()
