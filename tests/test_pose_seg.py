"""Tests of the inferred views (cocon.preprocess.pose, cocon.preprocess.seg, cocon.preprocess.mm): real mmpose / mmsegmentation / mmdet
models built from the packages' shipped configs (random initialisation, or checkpoints these tests
write), run on real rgb shards of tiny videos; frame alignment with the rgb view through the loader,
checkpoint loading, failures, reproducibility and a real snakemake run of both rules."""

from __future__ import annotations

import importlib
import json
import re

import numpy as np
import pytest
import torch

from conftest import run_cocon, stage_config

pytest.importorskip("mmcv", reason="the OpenMMLab stack is installed by `make setup`")

from cocon.data.clips import MultiViewClips, view_frame_indices  # noqa: E402
from cocon.data.shards import ShardReader  # noqa: E402
from cocon.preprocess import (  # noqa: E402  (mm registers the stand-ins of mm_ops: mmcv-lite has no compiled ops)
    frames,
    mm,
    mm_ops,
    pose,
    seg,
)

from mm_models import POSE_CONFIG, SEG_CONFIG, balance_person, pose_params, seg_params  # noqa: E402

pytestmark = pytest.mark.slow  # OpenMMLab models built and run on CPU

DATASET = {"name": "testset", "format": "csv"}
RGB_PARAMS = {
    "short_side": 48,
    "interpolation": "area",
    "max_frames": None,
    "min_frames": 8,
    "encoding": {"codec": "raw"},
}
ORDER = [
    ("walk/avi", "avi"),
    ("walk/zero", "zero"),
    ("jump/mp4", "mp4"),
    ("jump/missing", "missing"),
    ("walk/tall", "tall"),
]


def sharpened(model: torch.nn.Module, layer: str, factor: float, path) -> str:
    """Save `model`'s state_dict with the weights of its last layer `layer` multiplied by `factor`, as an
    mmengine-style checkpoint (with numpy objects in its meta, like the official ones): outputs then span
    the whole confidence range and change visibly from one frame to the next."""
    state = {k: (v * factor if k.startswith(layer) else v).clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": {"epoch": np.int64(3), "note": np.array([1.0, 2.0])}}, path)
    return str(path)


@pytest.fixture(scope="module")
def rgb(videos, make_manifest, tmp_path_factory):
    """rgb shard (raw) of 3 good clips (64x48 frames: 16, 12 and 10 of them) and 2 failed ones."""
    d = tmp_path_factory.mktemp("ps_rgb")
    make_manifest(d / "m.tsv", [(v, videos[name].path) for v, name in ORDER])
    out = d / "rgb" / "00000.h5"
    frames.run(str(d / "m.tsv"), "00000", str(out), RGB_PARAMS, DATASET, threads=2)
    return out


@pytest.fixture(scope="module")
def sharp(rgb, tmp_path_factory):
    """Checkpoints written here: seg and pose models with amplified last layers."""
    d = tmp_path_factory.mktemp("ckpt")
    s = seg.PersonProbability(seg_params(), "cpu", 0)
    balance_person(s, ShardReader(rgb).read(0, [0, 5, 10]), 40.0)
    p = pose.PoseHeatmaps(pose_params(), "cpu", 0)
    return {
        "seg": sharpened(s.model, "decode_head.conv_seg", 1.0, d / "seg.pth"),
        "pose": sharpened(p.model, "head.final_layer", 40.0, d / "pose.pth"),
    }


@pytest.fixture(scope="module")
def seg_shard(rgb, sharp, tmp_path_factory):
    out = tmp_path_factory.mktemp("ps_seg") / "00000.h5"
    failures = seg.run(str(rgb), "00000", str(out), seg_params(checkpoint=sharp["seg"]), DATASET, threads=2)
    return {"path": out, "failures": failures}


def test_seg_shapes_ranges_and_attributes(rgb, seg_shard):
    r, src = ShardReader(seg_shard["path"]), ShardReader(rgb)
    assert r.attrs["view"] == "seg" and r.attrs["frame_stride"] == 2 and r.attrs["frame_offset"] == 1
    assert r.attrs["person_class"] == "person" and r.attrs["person_class_index"] == 12  # ADE20K, from its metadata
    assert r.attrs["weights"].endswith("seg.pth") and abs(r.attrs["value_scale"] - 1 / 255) < 1e-12
    assert len(r.ok_rows()) == 3
    for i in r.ok_rows():
        t = src.index[i]["n_frames"]
        m = r.read(i)
        hw = mm.out_size(src.index[i]["height"], src.index[i]["width"], 32)  # 64x48 -> 43x32, 48x64 -> 32x43
        assert m.dtype == np.uint8 and m.shape == (len(range(1, t, 2)), *hw, 1)
        assert m.min() < 64 and m.max() > 192  # the sharpened model spans the probability range


def test_failed_upstream_videos_stay_failed(seg_shard):
    r = ShardReader(seg_shard["path"])
    assert dict(r.failures()) == {vid: why for vid, why in seg_shard["failures"]}
    assert [v for v, why in r.failures() if why.startswith("failed upstream (rgb): ")] == ["walk/zero", "jump/missing"]


def test_seg_frame_j_is_rgb_frame_offset_plus_j_stride(rgb, seg_shard, sharp):
    """Stored frame j == the model on rgb frame 1 + 2j (not 2j: the original's off-by-one)."""
    model = seg.PersonProbability(seg_params(checkpoint=sharp["seg"]), "cpu", 0)
    r, src = ShardReader(seg_shard["path"]), ShardReader(rgb)
    for i in r.ok_rows():
        stored = r.read(i).astype(int)
        t = src.index[i]["n_frames"]
        right = model(src.read(i, np.arange(1, t, 2))).astype(int)
        wrong = model(src.read(i, np.arange(0, t - 1, 2))).astype(int)
        assert np.abs(stored - right).max() <= 1
        assert np.abs(stored - wrong).mean() > 5 * np.abs(stored - right).mean() + 0.5


def centre(maps: np.ndarray) -> np.ndarray:
    """The centre square of (T, H, W) maps (the loader's evaluation crop; 43x32 -> 32x32)."""
    h, w = maps.shape[1:3]
    s = min(h, w)
    return maps[:, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]


def test_loader_maps_rgb_frame_k_to_its_seg_frame(rgb, seg_shard, sharp):
    """Through MultiViewClips: the seg block of rgb frame k is the map computed on rgb frame k when k is
    on the grid (k = 1 + 2j), otherwise the nearest stored one (ties to the later)."""
    ds = MultiViewClips(
        {"rgb": [str(rgb)], "seg": [str(seg_shard["path"])]},
        ["rgb", "seg"],
        role="train",
        holdout_fraction=0.0,
        num_blocks=2,
        block_len=3,
        stride=1,
        sizes={"rgb": 48, "seg": 32},
        augment=False,
    )
    model = seg.PersonProbability(seg_params(checkpoint=sharp["seg"]), "cpu", 0)
    src = ShardReader(rgb)
    r = ShardReader(seg_shard["path"])
    assert len(ds) >= 1
    for i, v in enumerate(ds.videos):
        idx = ds.frame_indices(i)
        got = ds[i]["seg"].numpy()  # (N, 1, K, 32, 32), x / 255
        got = got.transpose(0, 2, 1, 3, 4).reshape(len(idx), 32, 32)
        own = view_frame_indices(idx, r.index[v.row]["n_frames"], 2, 1)
        assert list(own) == [min(max(int(np.floor((k - 1) / 2 + 0.5)), 0), r.index[v.row]["n_frames"] - 1) for k in idx]
        stored = centre(r.read(v.row, own)[..., 0]) / 255.0  # the loader's centre square of the maps
        np.testing.assert_allclose(got, stored, atol=1e-6)
        for n, k in enumerate(idx):
            if (k - 1) % 2 == 0:
                direct = centre(model(src.read(v.row, [k]))[..., 0])[0] / 255.0
                assert np.abs(got[n] - direct).max() <= 1.5 / 255


def test_pose_heatmaps_shapes_names_and_alignment(rgb, sharp, tmp_path):
    out = tmp_path / "pose.h5"
    params = pose_params(checkpoint=sharp["pose"])
    pose.run(str(rgb), "00000", str(out), params, DATASET, threads=2)
    r, src = ShardReader(out), ShardReader(rgb)
    names = json.loads(r.attrs["keypoints"])
    assert names[:3] == ["nose", "left_eye", "right_eye"] and len(names) == 17
    assert r.attrs["boxes"] == "frame" and r.attrs["combine"] == "sum" and r.attrs["frame_stride"] == 2
    heat = pose.PoseHeatmaps(params, "cpu", 0)
    for i in r.ok_rows():
        t = src.index[i]["n_frames"]
        hm = r.read(i)
        h, w = src.index[i]["height"], src.index[i]["width"]
        assert hm.dtype == np.uint8 and hm.shape == (len(range(1, t, 2)), *mm.out_size(h, w, 32), 17)
        assert hm.max() == 255 and hm.min() == 0
        on_grid = src.read(i, np.arange(1, t, 2))
        box = [np.array([[0, 0, w, h, 1.0]], np.float32)] * len(on_grid)
        assert np.abs(hm.astype(int) - heat(on_grid, box).astype(int)).max() <= 1


def test_pose_combines_people_by_score(rgb, sharp):
    """`sum`: two copies of a box at score 0.5 give the map of one box at score 1; `max`: half of it."""
    frames_ = ShardReader(rgb).read(0, [3, 5])
    box = np.array([4, 2, 40, 46], np.float32)
    one = [np.array([[*box, 1.0]], np.float32)] * 2
    two = [np.array([[*box, 0.5], [*box, 0.5]], np.float32)] * 2
    total = pose.PoseHeatmaps(pose_params(checkpoint=sharp["pose"]), "cpu", 0)
    peak = pose.PoseHeatmaps(pose_params(checkpoint=sharp["pose"], combine="max"), "cpu", 0)
    ref = total(frames_, one).astype(int)
    assert ref.max() > 100
    assert np.abs(total(frames_, two).astype(int) - ref).max() <= 1
    assert np.abs(peak(frames_, two).astype(int) - np.rint(total(frames_, [b[:1] for b in two]))).max() <= 1
    unsaturated = ref < 250
    assert unsaturated.mean() > 0.5
    assert np.abs(peak(frames_, two).astype(int) * 2 - ref)[unsaturated].max() <= 2
    empty = total(frames_, [np.zeros((0, 5), np.float32)] * 2)
    assert empty.shape == (2, 32, 43, 17) and not empty.any()  # no person: all zeros


def test_seg_boxes_from_probability_map():
    m = np.zeros((1, 32, 48, 1), np.uint8)
    m[0, 4:12, 6:16] = 230  # a component of 80 px
    m[0, 20:30, 30:44] = 153  # 140 px
    m[0, 0, 47] = 255  # a single pixel: below min_area
    boxes = pose.seg_boxes(m, (64, 96), threshold=0.5, min_area=0.01, max_people=5)[0]
    np.testing.assert_allclose(boxes[:, :4], [[12, 8, 32, 24], [60, 40, 88, 60]])
    np.testing.assert_allclose(boxes[:, 4], [230 / 255, 153 / 255], rtol=1e-6)
    assert len(pose.seg_boxes(m, (64, 96), 0.5, 0.01, max_people=1)[0]) == 1


def test_pose_with_boxes_from_the_seg_view(rgb, seg_shard, sharp, tmp_path):
    out = tmp_path / "pose.h5"
    params = pose_params(checkpoint=sharp["pose"], boxes="seg", seg_threshold=0.5)
    pose.run(str(rgb), "00000", str(out), params, DATASET, threads=2, seg=str(seg_shard["path"]))
    r, s = ShardReader(out), ShardReader(seg_shard["path"])
    assert r.ok_rows() == s.ok_rows() and r.attrs["boxes"] == "seg"
    for i in r.ok_rows():
        assert r.read(i).shape[:3] == s.read(i).shape[:3]
    bad = tmp_path / "bad.h5"
    with pytest.raises(SystemExit, match="frame_stride"):
        pose.run(str(rgb), "00000", str(bad), {**params, "frame_offset": 0}, DATASET, seg=str(seg_shard["path"]))
    assert not bad.exists()


def test_pose_with_an_mmdet_person_detector(rgb, tmp_path):
    out = tmp_path / "pose.h5"
    params = pose_params(boxes="detector")
    det = pose.DetectorBoxes(params, "cpu", 0)
    assert det.person == 0  # COCO's class 0, from the detector's metadata
    got = det(ShardReader(rgb).read(0, [1, 3, 5]))
    assert len(got) == 3 and all(b.shape[1] == 5 and len(b) <= 2 for b in got)
    assert all(((b[:, [0, 2]] >= -1e-3) & (b[:, [0, 2]] <= 64.001)).all() for b in got)  # rescaled to the frame
    pose.run(str(rgb), "00000", str(out), params, DATASET, threads=2)
    r = ShardReader(out)
    assert r.attrs["weights"] == "none" and json.loads(r.attrs["detector"])["checkpoint"] == "none"
    assert r.read(r.ok_rows()[0]).shape == (8, 32, 43, 17)


def test_pose_with_detector_boxes_is_the_same_with_the_stand_in_nms_as_with_the_compiled_one(rgb, tmp_path):
    """Where mmcv's compiled ops are installed (`make mm-full`): the pose stage with RTMDet person boxes
    (classifier amplified so that the scores spread and NMS has work to do) stores the same maps when mmcv's
    nms runs the stand-in's torch nms. Without them (CI, `make setup`) tests/test_nms.py checks the
    stand-in against the compiled op's recorded answers."""
    if mm.OPS["mmcv._ext"] != "compiled":
        pytest.skip("needs mmcv's compiled ops (make mm-full); tests/test_nms.py covers the stand-in")
    params = pose_params(boxes="detector", max_people=3)
    det = pose.DetectorBoxes(params, "cpu", 0)
    with torch.no_grad():  # scores spread, boxes of a few strides that overlap (random ones are < 1 px), people
        for cls, reg in zip(det.model.bbox_head.rtm_cls, det.model.bbox_head.rtm_reg):
            cls.weight *= 20
            cls.bias *= 20
            cls.bias[det.person] += 6
            reg.weight *= 20
            reg.bias += 2
    torch.save({"state_dict": det.model.state_dict()}, tmp_path / "det.pth")
    params["detector"]["checkpoint"] = str(tmp_path / "det.pth")
    nms_module = importlib.import_module("mmcv.ops.nms")  # (mmcv.ops.nms is the function)
    compiled, stand_in = nms_module.ext_module, mm_ops.stand_in()
    calls = []

    class Counting:
        def nms(self, *args, **kw):
            calls.append(len(args[0]))
            return stand_in.nms(*args, **kw)

    maps = {}
    for name, ext in (("compiled", compiled), ("stand-in", Counting())):
        nms_module.ext_module = ext
        try:
            pose.run(str(rgb), "00000", str(tmp_path / f"{name}.h5"), params, DATASET, threads=2)
        finally:
            nms_module.ext_module = compiled
        r = ShardReader(tmp_path / f"{name}.h5")
        maps[name] = [r.read(i) for i in r.ok_rows()]
    assert calls and max(calls) > 1000  # the stand-in ran, on many boxes
    assert all(np.array_equal(a, b) for a, b in zip(maps["compiled"], maps["stand-in"]))
    assert max(m.max() for m in maps["compiled"]) > 0  # people were found


def test_checkpoint_round_trip_gives_identical_outputs(rgb, tmp_path):
    """A model's state_dict saved to a file and loaded through the configured checkpoint path gives the
    same outputs; a different random seed without the checkpoint does not."""
    frames_ = ShardReader(rgb).read(0, [0, 7])
    a = seg.PersonProbability(seg_params(seed=5), "cpu", 5)
    path = tmp_path / "plain.pth"
    torch.save(a.model.state_dict(), path)  # a bare state_dict
    b = seg.PersonProbability(seg_params(checkpoint=str(path), seed=9), "cpu", 9)
    c = seg.PersonProbability(seg_params(seed=9), "cpu", 9)
    pa, pb, pc = a.probabilities(frames_), b.probabilities(frames_), c.probabilities(frames_)
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert not all(torch.equal(x, y) for x, y in zip(pa, pc))
    assert b.info["weights_sha256"] == mm.file_sha256(path)
    p1 = pose.PoseHeatmaps(pose_params(seed=5), "cpu", 5)
    torch.save(
        {"state_dict": p1.model.state_dict(), "meta": {"dataset_meta": p1.model.dataset_meta}}, tmp_path / "p.pth"
    )
    p2 = pose.PoseHeatmaps(pose_params(checkpoint=str(tmp_path / "p.pth"), seed=6), "cpu", 6)
    box = [np.array([[0, 0, 64, 48, 1.0]], np.float32)] * 2
    h1, h2 = (
        p1._instances([(f, b[0, :4]) for f, b in zip(frames_, box)]),
        p2._instances([(f, b[0, :4]) for f, b in zip(frames_, box)]),
    )
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(h1, h2))


def test_model_that_fails_to_load_names_config_and_checkpoint(rgb, tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"state_dict": {"backbone.nothing": torch.zeros(1)}}, wrong)
    with pytest.raises(
        mm.ModelLoadError, match=re.escape(f"config '{SEG_CONFIG}', checkpoint '{wrong}'") + ".*missing"
    ):
        seg.PersonProbability(seg_params(checkpoint=str(wrong)), "cpu", 0)
    out = tmp_path / "x.h5"
    proc = run_cocon(
        *("pose", "--rgb", rgb, "--shard", "00000", "--out", out),
        *("--config-json", stage_config("pose", pose_params(checkpoint=str(tmp_path / "absent.pth")), DATASET)),
    )
    assert proc.returncode != 0 and not out.exists()
    assert f"config '{POSE_CONFIG}', checkpoint '{tmp_path / 'absent.pth'}'" in proc.stderr
    with pytest.raises(mm.ModelLoadError, match="no-such-config"):
        mm.build_model("seg", "no-such-config", None, "cpu", 0)
    with pytest.raises(mm.ModelLoadError, match="no class 'human'"):
        seg.PersonProbability(seg_params(person_class="human"), "cpu", 0)


def test_frames_too_small_for_the_model_are_handled(videos, make_manifest, tmp_path):
    """8x6 frames (SegFormer and RTMDet have an overall stride of 32): the seg and detector pipelines
    resize them (after the min_side enlargement), pose crops them to its input size; no crash."""
    make_manifest(tmp_path / "m.tsv", [("walk/avi", videos["avi"].path)])
    tiny = tmp_path / "rgb.h5"
    frames.run(str(tmp_path / "m.tsv"), "00000", str(tiny), {**RGB_PARAMS, "short_side": 6}, DATASET)
    out = tmp_path / "seg.h5"
    seg.run(str(tiny), "00000", str(out), seg_params(short_side=6), DATASET)
    assert ShardReader(out).read(0).shape == (8, 6, 8, 1)
    pose.run(str(tiny), "00000", str(tmp_path / "pose.h5"), pose_params(short_side=6, boxes="detector"), DATASET)
    assert ShardReader(tmp_path / "pose.h5").read(0).shape == (8, 6, 8, 17)


def test_pose_and_seg_in_one_process_and_byte_identical_rerun(rgb, seg_shard, sharp, tmp_path):
    """seg, then pose, then seg again in this process: the second seg shard is byte-identical to the first
    (no registry-scope leak between mmpose, mmdet and mmseg; deterministic inference)."""
    pose.run(str(rgb), "00000", str(tmp_path / "pose.h5"), pose_params(boxes="detector"), DATASET, threads=2)
    again = tmp_path / "seg.h5"
    seg.run(str(rgb), "00000", str(again), seg_params(checkpoint=sharp["seg"]), DATASET, threads=2)
    assert again.read_bytes() == seg_shard["path"].read_bytes()


def test_snakemake_runs_both_rules_and_the_summary_warns(tmp_path):
    from workflow_runs import PREPROCESS, TINY, job_counts, snakemake

    cfg = {
        **TINY,
        "flow": {"methods": ["farneback"]},
        "seg": {
            "enabled": True,
            "config": SEG_CONFIG,
            "checkpoint": None,
            "input_scale": [64, 64],
            "short_side": 32,
            "device": "cpu",
            "gpus": 0,
        },
        "pose": {
            "enabled": True,
            "config": POSE_CONFIG,
            "checkpoint": None,
            "input_size": [48, 64],
            "boxes": "seg",
            "short_side": 32,
            "device": "cpu",
            "gpus": 0,
        },
        "train": {**TINY["train"], "views": ["rgb", "pose", "seg"]},
        "shards": {"videos_per_shard": 4},  # 8 videos in 2 shards
    }
    proc = snakemake(tmp_path, cfg, "--cores", "2", *PREPROCESS)
    res = tmp_path / "results"
    for view in ("seg", "pose"):
        names = sorted(p.name for p in (res / "shards" / view).glob("*.h5"))
        assert names == ["00000.h5", "00001.h5"]
        assert "WEIGHTS: NONE" in (tmp_path / "logs" / view / "00000.log").read_text()
        assert (tmp_path / "benchmarks" / view / "00000.tsv").exists()
    summary = json.loads((res / "reports" / "preprocess_summary.json").read_text())
    assert [w.split(":")[0] for w in summary["warnings"]] == ["pose", "seg"]
    assert "WARNING pose: weights none" in proc.stdout + proc.stderr
    shards = {v: sorted(str(p) for p in (res / "shards" / v).glob("*.h5")) for v in ("rgb", "pose", "seg")}
    ds = MultiViewClips(
        shards,
        ["rgb", "pose", "seg"],
        role="train",
        holdout_fraction=0.0,
        num_blocks=4,
        block_len=2,
        stride=1,
        sizes={"rgb": 32, "pose": 32, "seg": 32},
        augment=True,
    )
    sample = ds[0]
    assert sample["pose"].shape == (4, 17, 2, 32, 32) and sample["seg"].shape == (4, 1, 2, 32, 32)
    assert 0 <= float(sample["pose"].min()) and float(sample["seg"].max()) <= 1
    assert job_counts(snakemake(tmp_path, cfg, "-n", "--cores", "2", *PREPROCESS).stdout).get("total", 0) == 0
