"""The preprocessing figures (cocon.evaluate.views_figure): real shards with known content - rgb moving right or
left, its real TVL1 and Farneback flow, a pose map that follows the content, an empty seg map - rendered and
checked on the PNG's pixels, the metadata, the failed videos and byte-for-byte reproducibility; and the
workflow's rule on the tiny demo with every view (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cocon.config import load_config
from cocon.data.clips import view_frame_indices
from cocon.data.shards import ShardWriter, encode_frames
from cocon.evaluate import colour
from cocon.evaluate import views_figure as VF
from cocon.preprocess import flow
from cocon.preprocess import summary as S
from cocon.sources.records import VideoRecord, write_manifest

from conftest import run_cocon

H, W, T, STEP = 48, 64, 12, 2  # rgb frames; content moves STEP px per frame
DATASET = {"name": "views-test", "format": "csv"}
FLOW = load_config()["flow"]
FAST_TVL1 = {**FLOW["tvl1"], "scales": 3, "warps": 2, "inner_iterations": 10, "outer_iterations": 3}
RAW = {"codec": "raw"}
POSE_STRIDE = 2
# (video_id, split 1 role, direction of motion or None = failed in rgb); shards of 4 and 1 videos
VIDEOS = {
    "00000": [("Left/v0", "test", -1), ("Left/v1", "train", -1), ("Right/v2", "train", 1), ("Right/v3", "train", None)],
    "00001": [("Right/v4", "test", 1)],
}


def record(vid: str, role: str) -> VideoRecord:
    label = vid.split("/")[0]
    return VideoRecord(vid, f"/data/{vid}.avi", label, ("Left", "Right").index(label), vid, {"1": role})


def moving(direction: int, seed: int) -> np.ndarray:
    """uint8 (T, H, W, 3): a smooth random texture translated by direction * STEP px per frame."""
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.integers(0, 256, (H, W + STEP * T, 3)).astype(np.float32), (0, 0), 2.0)
    tex = cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    s = STEP * T
    return np.stack([tex[:, s - direction * STEP * k - (s if direction < 0 else 0) :][:, :W] for k in range(T)])


def blob_centre(direction: int, k: int) -> tuple[float, float]:
    """(x, y) in rgb px of the pose blob at rgb frame k: it moves with the content."""
    return 32 + direction * STEP * k, 24


def pose_frames(direction: int) -> np.ndarray:
    """uint8 (ceil(T/2), H/2, W/2, 17): one Gaussian blob (peak 255) on channel 5, at the content's place."""
    n = -(-T // POSE_STRIDE)
    y, x = np.mgrid[0 : H // 2, 0 : W // 2].astype(np.float32)
    out = np.zeros((n, H // 2, W // 2, 17), np.uint8)
    for j in range(n):
        cx, cy = blob_centre(direction, j * POSE_STRIDE)
        out[j, ..., 5] = np.rint(255 * np.exp(-((x - cx / 2) ** 2 + (y - cy / 2) ** 2) / 2.0))
    return out


def write_strided(root: Path, view: str, make, offset: int = 0) -> None:
    attrs = {
        "stage": view,
        "params": {},
        "dataset": DATASET,
        "frame_stride": POSE_STRIDE,
        "frame_offset": offset,
        "value_scale": 1 / 255,
        "weights": "none",
    }
    for shard, rows in VIDEOS.items():
        with ShardWriter(root / "shards" / view / f"{shard}.h5", view, shard, attrs, {"codec": "png", "level": 1}) as w:
            for vid, role, direction in rows:
                if direction is None:
                    w.add_failure(record(vid, role), "failed upstream (rgb): zero-byte file")
                else:
                    frames = make(direction)
                    meta = {"fps": 25.0, "frame_stride": POSE_STRIDE, "frame_offset": offset, "value_scale": 1 / 255}
                    w.add_video(record(vid, role), encode_frames(frames, {"codec": "png", "level": 1}), meta)


def make_run(root: Path, pose_offset: int = 0) -> Path:
    """<root>/shards/{rgb,flow_tvl1,flow_farneback,pose,seg}/0000{0,1}.h5, manifest, failed_videos.tsv."""
    for shard, rows in VIDEOS.items():
        rgb = root / "shards" / "rgb" / f"{shard}.h5"
        with ShardWriter(rgb, "rgb", shard, {"stage": "frames", "params": {}, "dataset": DATASET}, RAW) as w:
            for i, (vid, role, direction) in enumerate(rows):
                if direction is None:
                    w.add_failure(record(vid, role), "zero-byte file")
                else:
                    w.add_video(record(vid, role), encode_frames(moving(direction, i), RAW), {"fps": 25.0})
        for method, section in (("tvl1", FAST_TVL1), ("farneback", FLOW["farneback"])):
            params = {"bound": FLOW["bound"], "encoding": {"codec": "png", "level": 1}, method: section}
            out = root / "shards" / f"flow_{method}" / f"{shard}.h5"
            out.parent.mkdir(parents=True, exist_ok=True)
            flow.run(method, str(rgb), shard, str(out), params, DATASET)
    write_strided(root, "pose", pose_frames, pose_offset)
    write_strided(root, "seg", lambda d: np.zeros((-(-T // POSE_STRIDE), H // 2, W // 2, 1), np.uint8))
    manifest, missing = root / "manifest.tsv", root / "missing.tsv"
    write_manifest(manifest, [[record(v, r) for v, r, _ in rows] for rows in VIDEOS.values()])
    missing.write_text("video_id\texpected\tsource\n")
    shards = sorted(str(p) for p in (root / "shards").rglob("*.h5"))
    S.main(["--manifest", str(manifest), "--missing", str(missing), "--json", str(root / "s.json")]
           + ["--tsv", str(root / "failed_videos.tsv"), *shards])  # fmt: skip
    return root


VIEWS = ["rgb", "flow_tvl1", "flow_farneback", "pose", "seg"]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    root = make_run(tmp_path_factory.mktemp("views_run"))
    index = VF.run(root, VIEWS, root / "views", split=1, per_split=2, frames=6, failed_tsv=root / "failed_videos.tsv")
    return root, index


def png(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) of a PNG."""
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def cell_pixels(image: np.ndarray, box: list[int], margin: float = 0.25) -> np.ndarray:
    """(n, 3) pixels of a cell's interior (flow near the frame border is unreliable)."""
    x0, y0, x1, y1 = box
    dx, dy = int((x1 - x0) * margin), int((y1 - y0) * margin)
    return image[y0 + dy : y1 - dy, x0 + dx : x1 - dx].reshape(-1, 3).astype(int)


# ------------------------------------------------------------------ colour coding


def test_flow_colour_follows_the_middlebury_wheel():
    one = lambda u, v: colour.flow_colour(np.array([[u]]), np.array([[v]]), 4.0)[0, 0].astype(int)  # noqa: E731
    assert one(0, 0).tolist() == [255, 255, 255]  # no motion: white
    r, g, b = one(4, 0)  # right: red
    assert r == 255 and g < 10 and b < 50
    r, g, b = one(-4, 0)  # left: cyan
    assert r < 10 and g > 150 and b == 255
    r, g, b = one(0, 4)  # down (+v): orange-yellow
    assert r == 255 and 100 < g < 255 and b < 10
    r, g, b = one(0, -4)  # up: blue-violet
    assert b == 255 and r < 200 and g < 10
    half, beyond = one(2, 0), one(8, 0)
    assert half[0] == 255 and 120 < half[1] < 135  # half the magnitude: half the saturation
    assert beyond[0] == 191  # beyond max_px: darkened
    wheel = colour.colour_wheel(33)
    assert wheel[16, 32, :3].tolist() == colour.flow_colour(np.array([[1.0]]), np.array([[0.0]]), 1.0)[0, 0].tolist()
    assert wheel[0, 0, 3] == 0 and wheel[16, 16, 3] == 255


def test_frames_sit_on_the_strided_views_grid_or_fall_back():
    assert VF.choose_frames(12, [(2, 0), (2, 0)], 6).tolist() == [0, 2, 4, 6, 8, 10]
    assert VF.choose_frames(48, [(2, 0)], 6).tolist() == [0, 10, 18, 28, 36, 46]
    assert VF.choose_frames(12, [], 4).tolist() == [0, 4, 7, 11]
    # pose on odd frames, seg on even ones: no common frame, so all frames (the cells then say which rgb
    # frame each map holds)
    assert VF.choose_frames(12, [(2, 1), (2, 0)], 6).tolist() == [0, 2, 4, 7, 9, 11]
    assert VF.choose_frames(3, [], 6).tolist() == [0, 1, 2]


# ------------------------------------------------------------------ figures of real shards


def test_videos_chosen_per_role_one_per_class_in_manifest_order(drawn):
    root, index = drawn
    got = [(f["role"], f["video_id"], f["shard"], f["row"]) for f in index["figures"]]
    assert got == [
        ("train", "Left/v1", "00000", 1),
        ("train", "Right/v2", "00000", 2),
        ("test", "Left/v0", "00000", 0),
        ("test", "Right/v4", "00001", 0),
    ]
    names = sorted(p.name for p in (root / "views").glob("*.png"))
    assert names == sorted(["failed_videos.png", *(f["file"] for f in index["figures"])])
    assert index["figures"][0]["file"] == "train1_Left_v1.png"
    assert json.loads((root / "views" / "index.json").read_text()) == json.loads(json.dumps(index))


def test_flow_rows_are_red_for_rightward_and_cyan_for_leftward_motion(drawn):
    root, index = drawn
    for fig in index["figures"]:
        image = png(root / "views" / fig["file"])
        for view in ("flow_tvl1", "flow_farneback"):
            info = fig["views"][view]
            assert info["bound"] == 20 and info["flow_max"] == 20 and not any(info["empty"])
            assert all(1.5 < m < 4 for m in info["max"]), info["max"]  # 2 px per frame
            for box in info["cells"]:
                r, g, b = np.median(cell_pixels(image, box), axis=0)
                if fig["video_id"].startswith("Right"):
                    assert r > g + 12 and r > b + 12, (fig["file"], view, (r, g, b))
                else:
                    assert b > r + 12 and g > r + 8, (fig["file"], view, (r, g, b))


def test_pose_lies_on_its_rgb_frame_and_empty_seg_is_labelled(drawn):
    root, index = drawn
    fig = index["figures"][1]  # Right/v2
    assert fig["rgb_frames"] == [0, 2, 4, 6, 8, 10]  # on the stride-2 grid of pose and seg
    pose, seg = fig["views"]["pose"], fig["views"]["seg"]
    assert pose["stored"] == [0, 1, 2, 3, 4, 5] and pose["rgb_held"] == fig["rgb_frames"]
    assert pose["max"] == [1.0] * 6 and not any(pose["empty"])
    assert seg["max"] == [0.0] * 6 and all(seg["empty"])
    image = png(root / "views" / fig["file"])
    for k, box in zip(fig["rgb_frames"], pose["cells"]):
        x0, y0, x1, y1 = box
        cx, cy = blob_centre(1, k)
        px, py = int(x0 + (cx + 0.5) / W * (x1 - x0)), int(y0 + (cy + 0.5) / H * (y1 - y0))
        hot = image[py - 3 : py + 4, px - 3 : px + 4].reshape(-1, 3).max(axis=0)
        assert hot[0] > 180 and int(hot[0]) - int(hot[2]) > 80, (k, hot)  # inferno at ~0.8 (resized): orange
        corner = image[y0 + 4 : y0 + 12, x0 + 4 : x0 + 12].reshape(-1, 3).mean(axis=0)
        assert corner.max() < 160, (k, corner)  # the dimmed frame, no heat


def test_a_misaligned_map_is_shown_at_the_rgb_frame_it_holds(tmp_path):
    """Pose on odd rgb frames, seg on even ones: the columns cannot sit on both grids; each cell maps through
    the loader's view_frame_indices and says which rgb frame it holds."""
    root = make_run(tmp_path, pose_offset=1)
    index = VF.run(root, VIEWS, tmp_path / "views", per_split=1, frames=6)
    fig = index["figures"][0]
    ks = np.array(fig["rgb_frames"])
    pose = fig["views"]["pose"]
    assert pose["stored"] == view_frame_indices(ks, 6, 2, 1).tolist()
    assert pose["rgb_held"] == (1 + 2 * view_frame_indices(ks, 6, 2, 1)).tolist()
    assert pose["rgb_held"] != fig["rgb_frames"]
    assert index["failed"]["videos"] == 0  # no failed_videos.tsv given


def test_failed_videos_figure_and_reasons(drawn):
    root, index = drawn
    assert index["failed"] == {"file": "failed_videos.png", "videos": 1}
    failed = VF.failures_by_video(VF.read_failures(root / "failed_videos.tsv"), VIEWS)
    assert failed == [
        {
            "video_id": "Right/v3",
            "shard": "00000",
            "views": VIEWS,
            "reason": "zero-byte file",
        }
    ]
    assert png(root / "views" / "failed_videos.png").shape[1] == 1100


def test_report_section_shows_the_figures_and_the_failed_videos(drawn):
    from cocon.evaluate.report import preprocessing_section

    root, index = drawn
    page, md = preprocessing_section(root / "views", root / "failed_videos.tsv", "views")
    for fig in index["figures"]:
        assert f'<a href="views/{fig["file"]}"><img src="views/{fig["file"]}"' in page
        assert f"(views/{fig['file']})" in md
    assert "seg: empty in 6/6 frames" in page and "pose:" not in page  # pose is aligned and not empty
    assert page.count("<td>Right/v3</td>") == len(VIEWS) and "<td>zero-byte file</td>" in page
    assert "Failed videos: 1 (5 view failures)" in page and 'href="views/failed_videos.png"' in page
    assert "| flow_tvl1 | 00000 | Right/v3 | failed upstream (rgb): zero-byte file |" in md


def test_same_shards_give_the_same_bytes_through_the_command(drawn, tmp_path):
    root, _ = drawn
    out = tmp_path / "again"
    proc = run_cocon(
        *("views-figure", "--output-dir", root, "--views", *VIEWS, "--out", out),
        *("--failed", root / "failed_videos.tsv", "--split", "1"),
    )
    assert proc.returncode == 0, proc.stderr
    first = {p.name: p.read_bytes() for p in sorted((root / "views").iterdir())}
    second = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert first.keys() == second.keys() and first == second
    assert not any(b"Software" in data for name, data in first.items() if name.endswith(".png"))


# ------------------------------------------------------------------ the rule on the tiny demo


@pytest.mark.slow
def test_rule_draws_the_demo_views_and_the_report_takes_them(demo_run, tmp_path):
    """The rule in the session's tiny demo run with every view (pose and seg by the demo's randomly initialised
    models): one figure per chosen video with a row per view, in snakemake --report under Preprocessing; the
    report rule takes the folder and the failed videos, and its tables link every figure."""
    from cocon.evaluate.report import preprocessing_section

    from workflow_runs import ALL_VIEWS, snakemake

    reports = demo_run / "results" / "reports"
    index = json.loads((reports / "views" / "index.json").read_text())
    assert [(f["role"], f["label"]) for f in index["figures"]] == [
        ("train", "JumpingJack"),
        ("train", "Wave"),
        ("test", "JumpingJack"),
        ("test", "Wave"),
    ]
    assert sorted(p.name for p in (reports / "views").glob("*.png")) == sorted(
        ["failed_videos.png", *(f["file"] for f in index["figures"])]
    )
    for fig in index["figures"]:
        image = png(reports / "views" / fig["file"])
        assert image.shape[0] > 5 * 100 and image.shape[1] > 6 * 160  # a row per view, a column per frame
        assert sorted(fig["views"]) == sorted(VIEWS) and all(v["status"] == "ok" for v in fig["views"].values())
        assert fig["rgb_frames"] == [0, 2, 4, 6, 8, 10]  # on the pose/seg grid (stride 2, offset 0)
        assert fig["views"]["pose"]["rgb_held"] == fig["rgb_frames"] == fig["views"]["seg"]["rgb_held"]
        assert len(fig["views"]["flow_tvl1"]["cells"]) == 6 and fig["views"]["flow_tvl1"]["bound"] == 20
    assert index["views"] == VIEWS and index["failed"]["videos"] == 0  # rows in this order
    assert (demo_run / "logs" / "views_figure.log").stat().st_size > 0
    assert (demo_run / "benchmarks" / "views_figure.tsv").exists()

    page = tmp_path / "report.html"
    snakemake(demo_run, ALL_VIEWS, "--report", str(page), "views_figure")
    text = page.read_text(errors="replace")
    assert "Preprocessing" in text and all(f["file"] in text for f in index["figures"])

    dry = snakemake(demo_run, ALL_VIEWS, "-n", "-p", "--cores", "2", "--forcerun", "report").stdout
    command = dry[dry.index("python -m cocon report") :].splitlines()[0]
    assert "--views-dir results/reports/views --failed-videos results/reports/failed_videos.tsv" in command
    html, md = preprocessing_section(reports / "views", reports / "failed_videos.tsv", "views")
    assert all(f'href="views/{f["file"]}"' in html for f in index["figures"])
    assert "Failed videos: 0" in html
