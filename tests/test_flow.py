"""Tests of the flow stages (cocon.preprocess.flow): the uint8 quantisation, and TVL1 / Farneback flow shards
checked bit for bit against OpenCV run directly on the same stored rgb frames, plus alignment with the
rgb view, the direction of a known translation, failures carried from upstream and reproducibility."""

from __future__ import annotations

import json

import cv2
import h5py
import numpy as np
import pytest

from cocon.config import load_config
from cocon.data.shards import ShardReader
from cocon.preprocess import flow, frames
from cocon.provenance import dumps

from conftest import run_cocon, stage_config

DATASET = {"name": "testset", "format": "csv"}
BOUND = 20
DEFAULTS = load_config()["flow"]  # the schema's defaults: tvl1, farneback, bound 20, jpeg q95
# fewer scales / warps / iterations: ~4x faster than the defaults, still an accurate flow on these clips
FAST_TVL1 = {**DEFAULTS["tvl1"], "scales": 3, "warps": 2, "inner_iterations": 10, "outer_iterations": 3}
PNG = {"codec": "png", "level": 1}
RGB_PARAMS = {
    "short_side": 48,
    "interpolation": "area",
    "max_frames": None,
    "min_frames": 8,
    "encoding": {"codec": "raw"},
}
# stored rgb frames are 64x48 (avi: as encoded; mp4: 96x72 scaled by 2/3; tall: 48x64 as encoded), so the
# content moves per frame by (dx, dy) px of the stored frames:
SHIFT = {"walk/avi": (2, 1), "jump/mp4": (-2, 2), "walk/tall": (1, -2)}
ORDER = [
    ("walk/avi", "avi"),
    ("walk/zero", "zero"),
    ("jump/mp4", "mp4"),
    ("jump/missing", "missing"),
    ("walk/tall", "tall"),
]


def tvl1_params(p: dict, encoding=PNG, bound=BOUND) -> dict:
    return {"bound": bound, "encoding": encoding, "tvl1": p}


def direct_tvl1(p: dict):
    """The OpenCV object built here, positionally, from the config keys (independently of cocon.preprocess.flow)."""
    return cv2.optflow.DualTVL1OpticalFlow_create(
        p["tau"],
        p["lambda"],
        p["theta"],
        p["scales"],
        p["warps"],
        p["epsilon"],
        p["inner_iterations"],
        p["outer_iterations"],
        p["scale_step"],
        p["gamma"],
        p["median_filtering"],
        False,
    )


def stored_gray(rgb_path, row: int) -> list[np.ndarray]:
    """Grayscale of the rgb frames of `row` as stored (raw codec), read with h5py directly."""
    with h5py.File(rgb_path, "r") as h5:
        rgb = h5[f"videos/{row:05d}"][()]
    return [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb]


def expected_flow(gray: list[np.ndarray], calc, bound=BOUND) -> np.ndarray:
    """The documented result: k -> quantize(flow(k, k+1)), and T-1 repeats T-2."""
    q = [flow.quantize(calc(gray[k], gray[k + 1]), bound) for k in range(len(gray) - 1)]
    return np.stack(q + [q[-1]])


def interior_mean(f: np.ndarray, margin: int = 8) -> np.ndarray:
    """Mean (u, v) px over all frames, away from the borders where new content enters."""
    return f[:, margin:-margin, margin:-margin].reshape(-1, 2).mean(axis=0)


# ------------------------------------------------------------------ quantisation


def test_quantize_fixed_points_and_clipping():
    for bound in (20, 10, 15, 2.5):
        for dtype in (np.float32, np.float64):
            f = np.array([0.0, bound, -bound, 2 * bound, -2 * bound, 1e9, -1e9, bound + 0.01], dtype)
            q = flow.quantize(f, bound)
            assert q.dtype == np.uint8
            assert q.tolist() == [128, 255, 0, 255, 0, 255, 0, 255], (bound, dtype)
    q = flow.quantize(np.zeros((3, 4, 5, 2), np.float32), BOUND)
    assert q.shape == (3, 4, 5, 2) and np.all(q == 128)


def test_quantize_matches_documented_formula_and_is_monotonic():
    rng = np.random.default_rng(0)
    for bound in (20, 7.5, 1):
        f = rng.uniform(-1.5 * bound, 1.5 * bound, 20000)
        want = np.rint((np.clip(f, -bound, bound) + bound) * 255 / (2 * bound)).astype(np.uint8)
        np.testing.assert_array_equal(flow.quantize(f, bound), want)
        grid = np.linspace(-2 * bound, 2 * bound, 5001)
        assert np.all(np.diff(flow.quantize(grid, bound).astype(int)) >= 0)
        assert set(np.unique(flow.quantize(grid, bound)).tolist()) == set(range(256))  # every level is used


def test_dequantize_round_trip_error_is_at_most_half_a_step():
    for bound in (20, 10, 3.3):
        for dtype in (np.float32, np.float64):
            f = np.linspace(-bound, bound, 100001).astype(dtype)
            back = flow.dequantize(flow.quantize(f, bound), bound)
            assert back.dtype == np.float32
            # half a step, plus float32 rounding of values of magnitude `bound`
            assert np.abs(back - f).max() <= bound / 255 + 4 * np.finfo(np.float32).eps * bound, (bound, dtype)
        q = np.arange(256, dtype=np.uint8)
        d = flow.dequantize(q, bound)
        assert d[0] == pytest.approx(-bound) and d[255] == pytest.approx(bound)
        np.testing.assert_allclose(np.diff(d), 2 * bound / 255, rtol=1e-4)
        np.testing.assert_array_equal(flow.quantize(d, bound), q)  # dequantize then quantize is the identity
        # clipped values come back as the bound
        assert flow.dequantize(
            flow.quantize(np.array([5 * bound, -5 * bound]), bound), bound
        ).tolist() == pytest.approx([bound, -bound])


def test_quantize_zero_is_128_for_float32_flow_with_any_bound():
    for bound in (7, 1.3, 20):
        assert flow.quantize(np.zeros(1, np.float32), bound)[0] == 128, bound


# ------------------------------------------------------------------ shards: fixtures


@pytest.fixture(scope="module")
def rgb(videos, make_manifest, tmp_path_factory):
    """rgb shard (raw codec) of 3 good clips and 2 bad ones, 64x48 frames (16, 12 and 10 frames)."""
    d = tmp_path_factory.mktemp("flow_rgb")
    make_manifest(d / "m.tsv", [(v, videos[name].path) for v, name in ORDER])
    out = d / "rgb.h5"
    failures = frames.run(str(d / "m.tsv"), "00000", str(out), RGB_PARAMS, DATASET, threads=2)
    assert [f[0] for f in failures] == ["walk/zero", "jump/missing"]
    return out


@pytest.fixture(scope="module")
def tvl1_png(rgb, tmp_path_factory):
    out = tmp_path_factory.mktemp("flow_tvl1") / "00000.h5"
    failures = flow.run("tvl1", str(rgb), "00000", str(out), tvl1_params(FAST_TVL1), DATASET, threads=1)
    return {"path": out, "failures": failures}


def ok_rows(reader: ShardReader) -> dict[str, int]:
    return {reader.index[i]["video_id"]: i for i in reader.ok_rows()}


# ------------------------------------------------------------------ TVL1


def test_tvl1_equals_opencv_on_stored_frames(rgb, tvl1_png):
    """Every stored flow frame == quantize(DualTVL1(same params).calc(gray_k, gray_k+1)), bit for bit (png)."""
    r = ShardReader(tvl1_png["path"])
    algo = direct_tvl1(FAST_TVL1)
    assert set(ok_rows(r)) == set(SHIFT)
    for vid, i in ok_rows(r).items():
        got = r.read(i)
        want = expected_flow(stored_gray(rgb, i), lambda a, b: algo.calc(a, b, None))
        np.testing.assert_array_equal(got, want, err_msg=vid)
        np.testing.assert_array_equal(got[-1], got[-2])  # the last index repeats the previous one
        assert np.unique(got).size > 5 and np.abs(got.astype(int) - 128).mean() > 3  # not a zero field


def test_tvl1_default_params_on_a_few_pairs(videos, make_manifest, tmp_path):
    """The schema's default TVL1 parameters (= OpenCV's defaults) on 3 pairs per video, bit-exact."""
    make_manifest(tmp_path / "m.tsv", [("walk/avi", videos["avi"].path), ("walk/tall", videos["tall"].path)])
    rgb = tmp_path / "rgb.h5"
    frames.run(str(tmp_path / "m.tsv"), "00000", str(rgb), {**RGB_PARAMS, "max_frames": 4, "min_frames": 2}, DATASET)
    out = tmp_path / "flow.h5"
    params = {"bound": DEFAULTS["bound"], "encoding": PNG, "tvl1": DEFAULTS["tvl1"]}
    assert flow.run("tvl1", str(rgb), "00000", str(out), params, DATASET, threads=2) == []
    r = ShardReader(out)
    opencv_defaults = cv2.optflow.DualTVL1OpticalFlow_create()
    for i, vid in enumerate(["walk/avi", "walk/tall"]):
        got = r.read(i)
        assert got.shape[0] == 4
        want = expected_flow(stored_gray(rgb, i), lambda a, b: opencv_defaults.calc(a, b, None), DEFAULTS["bound"])
        np.testing.assert_array_equal(got, want, err_msg=vid)
        mean = interior_mean(flow.dequantize(got, DEFAULTS["bound"]))
        np.testing.assert_allclose(mean, SHIFT[vid], atol=0.1)


def test_flow_shard_aligned_with_rgb_view(rgb, tvl1_png):
    src, r = ShardReader(rgb), ShardReader(tvl1_png["path"])
    assert len(r.index) == len(src.index)
    for a, b in zip(src.index, r.index):
        for key in (
            "video_id",
            "path",
            "label",
            "label_index",
            "group",
            "splits",
            "status",
            "fps",
            "orig_height",
            "orig_width",
            "orig_frames",
        ):
            assert a[key] == b[key], key
        if a["status"] == "ok":
            assert (b["n_frames"], b["height"], b["width"], b["channels"]) == (
                a["n_frames"],
                a["height"],
                a["width"],
                2,
            )
    for vid, i in ok_rows(r).items():
        t, h, w = src.index[i]["n_frames"], src.index[i]["height"], src.index[i]["width"]
        f = r.read(i)
        assert f.shape == (t, h, w, 2) and f.dtype == np.uint8
        va = r.video_attrs(i)
        assert (va["method"], va["bound"], va["codec"]) == ("tvl1", float(BOUND), "png")
        assert va["source_path"] == src.video_attrs(i)["source_path"] and json.loads(va["shape"]) == [t, h, w, 2]
    a = r.attrs
    assert (a["view"], a["stage"], a["shard"], a["complete"]) == ("flow_tvl1", "flow_tvl1", "00000", True)
    assert a["params"] == dumps(tvl1_params(FAST_TVL1))
    assert a["rgb_params"] == src.attrs["params"] == dumps(RGB_PARAMS)
    assert a["flow_index"] == flow.FLOW_INDEX
    assert a["code_revision"] == src.attrs["code_revision"] and a["library_versions"] == src.attrs["library_versions"]


def test_translation_gives_known_flow(tvl1_png):
    """Content moving by (dx, dy) px per frame gives u ~ dx (x, right positive), v ~ dy (y, down positive)."""
    r = ShardReader(tvl1_png["path"])
    for vid, i in ok_rows(r).items():
        f = flow.dequantize(r.read(i), BOUND)
        mean = interior_mean(f)
        np.testing.assert_allclose(mean, SHIFT[vid], atol=0.15, err_msg=vid)
        np.testing.assert_allclose(np.median(f[:, 8:-8, 8:-8].reshape(-1, 2), axis=0), SHIFT[vid], atol=0.15)
        # every pair, not only on average
        per_pair = f[:-1, 8:-8, 8:-8].mean(axis=(1, 2))
        assert np.all(np.abs(per_pair - SHIFT[vid]) < 0.4), (vid, per_pair)


def test_failed_upstream_videos_are_carried(rgb, tvl1_png):
    src, r = ShardReader(rgb), ShardReader(tvl1_png["path"])
    upstream = dict(src.failures())
    assert set(upstream) == {"walk/zero", "jump/missing"}
    assert r.failures() == tvl1_png["failures"]
    assert [vid for vid, _ in r.failures()] == ["walk/zero", "jump/missing"]
    for vid, reason in r.failures():
        assert reason.startswith("failed upstream (rgb)")
        assert reason == f"failed upstream (rgb): {upstream[vid]}"
    assert (r.attrs["n_ok"], r.attrs["n_failed"]) == (3, 2)
    with h5py.File(tvl1_png["path"], "r") as h5:
        assert sorted(h5["videos"]) == ["00000", "00002", "00004"]
        assert [s.decode() for s in h5["failures/reason"][()]] == [reason for _, reason in r.failures()]


def test_threads_give_byte_identical_files(rgb, tvl1_png, tmp_path):
    out = tmp_path / "t2.h5"
    flow.run("tvl1", str(rgb), "00000", str(out), tvl1_params(FAST_TVL1), DATASET, threads=2)
    assert out.read_bytes() == tvl1_png["path"].read_bytes()


def test_default_jpeg_encoding_close_to_lossless(rgb, tvl1_png, tmp_path):
    out = tmp_path / "jpeg.h5"
    assert DEFAULTS["encoding"] == {"codec": "jpeg", "quality": 95}
    flow.run("tvl1", str(rgb), "00000", str(out), tvl1_params(FAST_TVL1, DEFAULTS["encoding"]), DATASET, threads=2)
    lossless, lossy = ShardReader(tvl1_png["path"]), ShardReader(out)
    for vid, i in ok_rows(lossless).items():
        a, b = lossless.read(i), lossy.read(i)
        assert a.shape == b.shape
        err = np.abs(flow.dequantize(a, BOUND) - flow.dequantize(b, BOUND))
        # px; one quantisation step is 0.157 px (measured: ~0.004 mean, < 1 step at most but at a few pixels)
        assert err.mean() < 0.03 and err.max() < 1.5, (vid, err.mean(), err.max())
        assert np.abs(interior_mean(flow.dequantize(b, BOUND)) - SHIFT[vid]).max() < 0.15
        # u and v are not mixed up by the vertical stacking
        np.testing.assert_allclose(b.reshape(-1, 2).mean(0), a.reshape(-1, 2).mean(0), atol=1.0)


@pytest.mark.slow
def test_torch_backend_writes_the_same_shard_as_opencv(rgb, tvl1_png, tmp_path):
    """flow.tvl1.backend torch (cocon.preprocess.tvl1, batches of 8 pairs, CPU), by the command line: the same
    shard layout, rows, failures, shapes, dtype and quantisation as the OpenCV backend, values within
    a quantisation step almost everywhere, the backend recorded; and the same bytes again on a rerun."""
    p = tvl1_params({**FAST_TVL1, "backend": "torch", "device": "cpu", "batch_size": 8})
    out = tmp_path / "torch" / "00000.h5"
    proc = run_cocon(
        *("flow", "--method", "tvl1", "--rgb", rgb, "--shard", "00000", "--out", out),
        *("--config-json", stage_config("flow", p, DATASET, "tvl1"), "--threads", "2"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "tvl1 backend: torch on cpu" in proc.stderr
    ref, got = ShardReader(tvl1_png["path"]), ShardReader(out)
    assert got.failures() == ref.failures()
    assert [dict(r, **{"n_frames": 0}) for r in got.index] == [dict(r, **{"n_frames": 0}) for r in ref.index]
    assert (got.attrs["tvl1_backend"], got.attrs["tvl1_device"]) == ("torch", "cpu")
    assert (ref.attrs["tvl1_backend"], ref.attrs["tvl1_device"]) == ("opencv", "cpu")
    assert got.attrs["params"] == dumps(p)
    for vid, i in ok_rows(ref).items():
        a, b = ref.read(i), got.read(i)
        assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
        assert got.video_attrs(i)["backend"] == "torch" and ref.video_attrs(i)["backend"] == "opencv"
        assert set(got.video_attrs(i)) == set(ref.video_attrs(i))
        steps = np.abs(a.astype(int) - b.astype(int))
        assert (steps <= 1).mean() > 0.99 and steps.mean() < 0.1, (vid, (steps <= 1).mean(), steps.mean())
        np.testing.assert_array_equal(b[-1], b[-2])
        np.testing.assert_allclose(interior_mean(flow.dequantize(b, BOUND)), SHIFT[vid], atol=0.15)
    again = tmp_path / "again.h5"
    flow.run("tvl1", str(rgb), "00000", str(again), p, DATASET, threads=1)
    assert again.read_bytes() == out.read_bytes()


# ------------------------------------------------------------------ Farneback


def test_farneback_equals_opencv_and_cli(rgb, tmp_path):
    """Farneback via the command line, bit-exact with cv2.calcOpticalFlowFarneback on the stored frames."""
    fb = DEFAULTS["farneback"]
    params = {"bound": BOUND, "encoding": PNG, "farneback": fb}
    out = tmp_path / "flow_farneback" / "00000.h5"
    proc = run_cocon(
        *("flow", "--method", "farneback", "--rgb", rgb, "--shard", "00000", "--out", out),
        *("--config-json", stage_config("flow", params, DATASET, "farneback"), "--threads", "2"),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "flow_farneback shard 00000: 3 ok, 2 failed" in proc.stderr
    assert "FAILED walk/zero [flow_farneback]: failed upstream (rgb): zero-byte file" in proc.stderr
    assert "FAILED jump/missing [flow_farneback]: failed upstream (rgb): file not found" in proc.stderr
    r = ShardReader(out)
    assert r.attrs["view"] == "flow_farneback"

    def calc(a, b):
        return cv2.calcOpticalFlowFarneback(
            a,
            b,
            None,
            fb["pyr_scale"],
            fb["levels"],
            fb["winsize"],
            fb["iterations"],
            fb["poly_n"],
            fb["poly_sigma"],
            0,
        )

    for vid, i in ok_rows(r).items():
        got = r.read(i)
        np.testing.assert_array_equal(got, expected_flow(stored_gray(rgb, i), calc), err_msg=vid)
        np.testing.assert_array_equal(got[-1], got[-2])
        np.testing.assert_allclose(interior_mean(flow.dequantize(got, BOUND)), SHIFT[vid], atol=0.15)
        assert r.video_attrs(i)["method"] == "farneback"


def test_farneback_in_process_threads_and_bound(rgb, tmp_path):
    """A smaller bound clips harder: 1.5 px caps the 2 px motion, and threads do not change the bytes."""
    params = {"bound": 1.5, "encoding": PNG, "farneback": DEFAULTS["farneback"]}
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    flow.run("farneback", str(rgb), "00000", str(a), params, DATASET, threads=1)
    flow.run("farneback", str(rgb), "00000", str(b), params, DATASET, threads=2)
    assert a.read_bytes() == b.read_bytes()
    r = ShardReader(a)
    i = ok_rows(r)["jump/mp4"]  # (-2, +2) px per frame: both components mostly clipped
    q = r.read(i)[:, 8:-8, 8:-8]
    assert (q[..., 0] == 0).mean() > 0.8 and (q[..., 1] == 255).mean() > 0.8
    assert r.video_attrs(i)["bound"] == 1.5


def test_unknown_method_is_rejected(rgb, tmp_path):
    with pytest.raises(ValueError, match="unknown flow method"):
        flow.run(
            "lucas-kanade",
            str(rgb),
            "00000",
            str(tmp_path / "x.h5"),
            {"bound": 20, "encoding": PNG, "lucas-kanade": {}},
            DATASET,
        )
    assert not list(tmp_path.iterdir())


def test_video_flow_refuses_a_single_frame():
    """One frame has no pair: a clear BadVideo, never uninitialised memory."""
    from cocon.preprocess.video import BadVideo

    compute = flow.FlowComputer(
        "farneback",
        {"farneback": {"pyr_scale": 0.5, "levels": 1, "winsize": 5, "iterations": 1, "poly_n": 5, "poly_sigma": 1.1}},
    )
    with pytest.raises(BadVideo, match="too short for flow"):
        flow.video_flow(np.zeros((1, 8, 8, 3), np.uint8), compute, 20, map)
