"""Tests of cocon.sources.ingest: each annotation format, its error reports, the missing-video policy and the CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cocon.sources.ingest import (
    Missing,
    load_dataset,
    read_csv_manifest,
    read_hmdb51,
    read_kinetics400,
    read_ucf101,
)
from cocon.sources.records import ManifestError, read_manifest

from conftest import run_cocon
from dataset_layouts import UCF_VIDEOS, make_hmdb, make_kinetics, make_ucf, touch, write


def raises_at(fn, file: Path | str, line: int | None, *words: str) -> ManifestError:
    """Call fn, expect a ManifestError at file:line whose message contains every word."""
    with pytest.raises(ManifestError) as info:
        fn()
    err = info.value
    assert (err.file, err.line) == (str(file), line), str(err)
    for w in words:
        assert w in err.message, (w, err.message)
    return err


def dataset_cfg(**dataset) -> dict:
    return {"dataset": {"split": 1, "on_missing": "error", **dataset}, "shards": {"videos_per_shard": 2}}


# ----------------------------------------------------------------------------------------------
# UCF101


def test_ucf101_records(tmp_path):
    root, ann = make_ucf(tmp_path)
    records, missing = read_ucf101(root, ann)
    assert missing == []
    ids = [r.video_id for r in records]
    assert ids == sorted(os.path.splitext(v)[0] for v in UCF_VIDEOS)
    by = {r.video_id: r for r in records}
    r = by["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c02"]
    assert r.path == os.path.abspath(root / "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c02.avi")
    assert (r.label, r.label_index, r.group) == ("ApplyEyeMakeup", 0, "ApplyEyeMakeup_g01")
    assert r.splits == {"1": "train", "2": "test"}
    r = by["Archery/v_Archery_g02_c01"]
    assert (r.label, r.label_index, r.group, r.splits) == ("Archery", 1, "Archery_g02", {"1": "test", "2": "train"})
    r = by["Basketball/odd_name"]
    assert (r.label_index, r.group, r.splits) == (2, "", {"1": "test", "2": "unused"})


def test_ucf101_single_split_and_load_dataset(tmp_path):
    root, ann = make_ucf(tmp_path)
    (ann / "trainlist02.txt").unlink()
    (ann / "testlist02.txt").unlink()
    records, _ = read_ucf101(root, ann)
    assert all(set(r.splits) == {"1"} for r in records)

    records, _ = load_dataset(dataset_cfg(format="ucf101", root=str(root), manifest=str(ann)))
    assert len(records) == len(UCF_VIDEOS)
    cfg = dataset_cfg(format="ucf101", root=str(root), manifest=str(ann), split=3)
    raises_at(lambda: load_dataset(cfg), ann, None, "split is 3", "trainlist03.txt")


def test_ucf101_missing_files(tmp_path):
    root, ann = make_ucf(tmp_path)
    (ann / "testlist02.txt").unlink()
    raises_at(lambda: read_ucf101(root, ann), ann / "testlist02.txt", None, "not found", "trainlist02.txt")
    for name in ("trainlist01.txt", "testlist01.txt", "trainlist02.txt"):
        (ann / name).unlink()
    raises_at(lambda: read_ucf101(root, ann), ann / "trainlist01.txt", None, "not found", "split 1")
    (ann / "classInd.txt").unlink()
    raises_at(lambda: read_ucf101(root, ann), ann / "classInd.txt", None, "not found")


@pytest.mark.parametrize(
    "name, lines, line, words",
    [
        ("classInd.txt", ["1 ApplyEyeMakeup", "two Archery"], 2, ["integer", "'two'"]),
        ("classInd.txt", ["1 ApplyEyeMakeup", "2 Archery extra"], 2, ["found 3 field"]),
        ("classInd.txt", ["1 ApplyEyeMakeup", "1 Archery"], 2, ["id 1 already used", "line 1"]),
        ("classInd.txt", ["1 ApplyEyeMakeup", "", "3 Archery"], None, ["id 2 is missing"]),
        ("classInd.txt", [""], None, ["empty"]),
        ("trainlist01.txt", ["Archery/v_Archery_g01_c01.avi"], 1, ["<class id>", "found 1 field"]),
        ("trainlist01.txt", ["Archery/v_Archery_g01_c01.avi 2", "Archery/v_Archery_g01_c01.avi x"], 2, ["integer"]),
        ("trainlist01.txt", ["Archery/v_Archery_g01_c01.avi 3"], 1, ["class id 3 (Basketball)", "folder Archery"]),
        ("trainlist01.txt", ["Archery/v_Archery_g01_c01.avi 9"], 1, ["unknown class id 9"]),
        ("trainlist01.txt", ["Bowling/v_Bowling_g01_c01.avi 2"], 1, ["unknown class 'Bowling'"]),
        ("trainlist01.txt", ["v_Archery_g01_c01.avi 2"], 1, ["<Class>/<video>.avi"]),
        ("testlist01.txt", ["Archery/v_Archery_g02_c01.avi 2"], 1, ["found 2 field"]),
        (
            "testlist01.txt",
            ["Archery/v_Archery_g02_c01.avi", "", "Archery/v_Archery_g02_c01.avi"],
            3,
            ["duplicate video Archery/v_Archery_g02_c01", "testlist01.txt:1"],
        ),
        # a video both in the train and the test list of one split
        ("testlist01.txt", ["Archery/v_Archery_g01_c01.avi"], 1, ["duplicate", "trainlist01.txt:"]),
    ],
)
def test_ucf101_malformed(tmp_path, name, lines, line, words):
    root, ann = make_ucf(tmp_path)
    write(ann / name, lines, eol="\r\n")
    raises_at(lambda: read_ucf101(root, ann), ann / name, line, *words)


def test_ucf101_missing_video(tmp_path):
    root, ann = make_ucf(tmp_path)
    (root / "Archery/v_Archery_g02_c01.avi").unlink()
    raises_at(lambda: read_ucf101(root, ann), ann / "testlist01.txt", 2, "Archery/v_Archery_g02_c01", "not found")
    records, missing = read_ucf101(root, ann, on_missing="skip")
    assert len(records) == len(UCF_VIDEOS) - 1
    expected = os.path.abspath(root / "Archery/v_Archery_g02_c01.avi")
    assert missing == [Missing("Archery/v_Archery_g02_c01", expected, f"{ann / 'testlist01.txt'}:2")]


def test_ucf101_all_missing(tmp_path):
    root, ann = make_ucf(tmp_path)
    raises_at(lambda: read_ucf101(tmp_path / "elsewhere", ann), tmp_path / "elsewhere", None, "dataset.root")
    (tmp_path / "elsewhere").mkdir()
    raises_at(lambda: read_ucf101(tmp_path / "elsewhere", ann, on_missing="skip"), ann, None, "none of the 7")


# ----------------------------------------------------------------------------------------------
# HMDB51


def test_hmdb51_records(tmp_path):
    root, ann = make_hmdb(tmp_path)
    records, missing = read_hmdb51(root, ann)
    assert missing == []
    by = {r.video_id: r for r in records}
    assert list(by) == sorted(by) and len(by) == 5
    r = by["brush_hair/c_brush_hair_2"]
    assert r.path == os.path.abspath(root / "brush_hair/c_brush_hair_2.avi")
    assert (r.label, r.label_index, r.group, r.splits) == ("brush_hair", 0, "", {"1": "unused", "2": "unused"})
    r = by["cartwheel/b_cartwheel_1"]
    assert (r.label, r.label_index, r.splits) == ("cartwheel", 1, {"1": "test", "2": "train"})
    records, _ = load_dataset(dataset_cfg(format="hmdb51", root=str(root), manifest=str(ann), split=2))
    assert sum(r.role(2) == "train" for r in records) == 2
    cfg = dataset_cfg(format="hmdb51", root=str(root), manifest=str(ann), split=3)
    raises_at(lambda: load_dataset(cfg), ann, None, "split is 3", "1, 2")


@pytest.mark.parametrize(
    "lines, line, words",
    [
        (["a_cartwheel_0.avi 1", "b_cartwheel_1.avi 3"], 2, ["0 (unused), 1 (train) or 2 (test)", "'3'"]),
        (["a_cartwheel_0.avi"], 1, ["found 1 field"]),
        (["a_cartwheel_0.avi 1", "a_cartwheel_0.avi 2"], 2, ["duplicate", "line 1"]),
        (["a_brush_hair_0.avi 1"], 1, ["under class cartwheel", "brush_hair", "brush_hair_test_split1.txt:1"]),
    ],
)
def test_hmdb51_malformed(tmp_path, lines, line, words):
    root, ann = make_hmdb(tmp_path)
    path = write(ann / "cartwheel_test_split2.txt", lines)
    raises_at(lambda: read_hmdb51(root, ann), path, line, *words)


def test_hmdb51_missing_things(tmp_path):
    root, ann = make_hmdb(tmp_path)
    write(ann / "cartwheel_test_split2.txt", [])
    raises_at(lambda: read_hmdb51(root, ann), ann / "cartwheel_test_split2.txt", None, "empty")
    (ann / "cartwheel_test_split2.txt").unlink()
    raises_at(lambda: read_hmdb51(root, ann), ann / "cartwheel_test_split2.txt", None, "not found")
    raises_at(lambda: read_hmdb51(root, tmp_path / "root"), tmp_path / "root", None, "not found")
    raises_at(lambda: read_hmdb51(root, root), root, None, "no HMDB51 split files")

    root, ann = make_hmdb(tmp_path / "again")
    (root / "cartwheel/b_cartwheel_1.avi").unlink()
    path = ann / "cartwheel_test_split1.txt"
    raises_at(lambda: read_hmdb51(root, ann), path, 2, "cartwheel/b_cartwheel_1")
    records, missing = read_hmdb51(root, ann, on_missing="skip")
    assert len(records) == 4
    expected = os.path.abspath(root / "cartwheel/b_cartwheel_1.avi")
    assert missing == [Missing("cartwheel/b_cartwheel_1", expected, f"{path}:2")]


# ----------------------------------------------------------------------------------------------
# Kinetics-400


def test_kinetics_records(tmp_path):
    root, ann = make_kinetics(tmp_path)
    records, missing = read_kinetics400(root, ann)
    assert missing == []
    by = {r.video_id: r for r in records}
    assert list(by) == sorted(by)
    assert set(by) == {
        "--abc_defgh_000014_000024",
        "xyz12345678_000000_000010",
        "AAAAAAAAAAA_000003_000013",
        "BBBBBBBBBBB_000100_000110",
        "DDDDDDDDDDD_000005_000015",
    }
    r = by["xyz12345678_000000_000010"]
    assert r.path == os.path.abspath(root / "train/air drumming/xyz12345678_000000_000010.MKV")
    assert (r.label, r.label_index, r.group, r.splits) == ("air drumming", 1, "xyz12345678", {"1": "train"})
    assert by["BBBBBBBBBBB_000100_000110"].splits == {"1": "test"}
    assert by["DDDDDDDDDDD_000005_000015"].splits == {"1": "unused"}
    assert by["--abc_defgh_000014_000024"].label_index == 0

    # one CSV file instead of a folder, through load_dataset
    records, _ = load_dataset(dataset_cfg(format="kinetics400", root=str(root), manifest=str(ann / "train.csv")))
    assert len(records) == 3


@pytest.mark.parametrize(
    "row, words",
    [
        ("abseiling,EEEEEEEEEEE,1,11", ["expected 6 fields", "found 4"]),
        ("abseiling,EEEEEEEEEEE,one,11,train,0", ["time_start", "whole number", "'one'"]),
        ("abseiling,EEEEEEEEEEE,1.5,11,train,0", ["time_start", "'1.5'"]),
        ("abseiling,EEEEEEEEEEE,20,11,train,0", ["before time_start"]),
        ("abseiling,EEEEEEEEEEE,1,11,training,0", ["split must be", "'training'"]),
        (",EEEEEEEEEEE,1,11,train,0", ["no label", "train row"]),
        (",EEEEEEEEEEE,1,11,val,0", ["no label", "val row"]),
        ("abseiling,AAAAAAAAAAA,3.0,13,train,0", ["duplicate clip AAAAAAAAAAA_000003_000013", "train.csv:4"]),
        ("abseiling,EEEEEEEEEEE,1,11,train,0", ["EEEEEEEEEEE_000001_000011", "not found"]),
    ],
)
def test_kinetics_malformed(tmp_path, row, words):
    root, ann = make_kinetics(tmp_path)
    path = ann / "train.csv"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n" + row + "\n")  # after a blank line: line 6
    raises_at(lambda: read_kinetics400(root, ann), path, 6, *words)


def test_kinetics_files_and_header(tmp_path):
    root, ann = make_kinetics(tmp_path)
    write(ann / "train.csv", ["label,youtube_id,time_start", "abseiling,x,1"])
    raises_at(lambda: read_kinetics400(root, ann), ann / "train.csv", 1, "time_end")
    write(ann / "train.csv", [])
    raises_at(lambda: read_kinetics400(root, ann), ann / "train.csv", None, "empty")
    (ann / "train.csv").unlink()
    write(ann / "clips.csv", ["label,youtube_id,time_start,time_end", "abseiling,AAAAAAAAAAA,3,13"])
    raises_at(lambda: read_kinetics400(root, ann), ann / "clips.csv", None, "no 'split' column")
    raises_at(lambda: read_kinetics400(root, tmp_path / "nope.csv"), tmp_path / "nope.csv", None, "not found")
    empty = tmp_path / "empty_ann"
    empty.mkdir()
    raises_at(lambda: read_kinetics400(root, empty), empty, None, "no *.csv")


def test_kinetics_old_test_list_without_labels(tmp_path):
    """The first Kinetics test list had no label column; its rows are skipped like unlabelled test rows."""
    root, ann = make_kinetics(tmp_path)
    write(ann / "test.csv", ["youtube_id,time_start,time_end,split", "CCCCCCCCCCC,0,10,test"])
    records, _ = read_kinetics400(root, ann)
    assert len(records) == 4 and all(r.role(1) != "unused" for r in records)
    write(ann / "test.csv", ["youtube_id,time_start,time_end,split", "CCCCCCCCCCC,0,10,train"])
    raises_at(lambda: read_kinetics400(root, ann), ann / "test.csv", 2, "no label", "train row")


def test_kinetics_duplicate_file_and_skip(tmp_path):
    root, ann = make_kinetics(tmp_path)
    touch(root / "copy/AAAAAAAAAAA_000003_000013.mp4")
    err = raises_at(lambda: read_kinetics400(root, ann), ann / "train.csv", 4, "more than once")
    assert "copy" in err.message and ".webm" in err.message

    root, ann = make_kinetics(tmp_path / "again")
    (root / "val/deep/er/BBBBBBBBBBB_000100_000110.mp4").unlink()
    records, missing = read_kinetics400(root, ann, on_missing="skip")
    assert len(records) == 4
    assert [(m.video_id, m.source) for m in missing] == [("BBBBBBBBBBB_000100_000110", f"{ann / 'validate.csv'}:2")]
    assert missing[0].expected.startswith(os.path.abspath(root))


def test_kinetics_index_scans_each_folder_once(tmp_path, monkeypatch):
    """The root is walked once: a few thousand files in nested folders cost one directory scan per
    folder (the stage's speed is a benchmark's business, not a test's)."""
    from cocon.sources.kinetics import index_videos

    for d in range(20):
        folder = tmp_path / f"class {d}"
        folder.mkdir()
        for i in range(250):
            (folder / f"yid{d:03d}{i:05d}_000000_000010.mp4").write_bytes(b"")
    scanned = []
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: scanned.append(str(path)) or scandir(path))
    found, twice = index_videos(str(tmp_path))
    assert len(found) == 5000 and not twice
    assert sorted(scanned) == sorted([str(tmp_path), *(str(tmp_path / f"class {d}") for d in range(20))])


# ----------------------------------------------------------------------------------------------
# generic CSV


def make_csv(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    for v in ("clips/a1.mp4", "clips/b1.mp4", "sub/c1.avi"):
        touch(data / v)
    outside = tmp_path / "outside" / "z9.mp4"
    touch(outside)
    return write(
        data / "list.csv",
        [
            "split,video,label,group",
            "train,clips/a1.mp4,walk,g1",
            "test,./clips/b1.mp4,run,g2",
            "",
            f"unused,{data / 'sub/c1.avi'},walk,",
            f"train,{outside},run,g3",
        ],
        "\r\n",
    )


def test_csv_records(tmp_path):
    csv_path = make_csv(tmp_path)
    records, missing = read_csv_manifest(csv_path)
    assert missing == []
    by = {r.video_id: r for r in records}
    outside = os.path.abspath(tmp_path / "outside" / "z9")
    assert list(by) == sorted(by) and set(by) == {"clips/a1", "clips/b1", "sub/c1", outside}
    r = by["clips/b1"]
    assert r.path == os.path.abspath(tmp_path / "data/clips/b1.mp4")
    assert (r.label, r.label_index, r.group, r.splits) == ("run", 0, "g2", {"1": "test"})
    assert (by["sub/c1"].label_index, by["sub/c1"].group, by["sub/c1"].splits) == (1, "", {"1": "unused"})
    assert by[outside].path == outside + ".mp4"

    # explicit root, without a group column
    csv2 = write(tmp_path / "elsewhere.csv", ["video,label,split", "clips/a1.mp4,walk,train"])
    records, _ = load_dataset(dataset_cfg(format="csv", manifest=str(csv2), root=str(tmp_path / "data")))
    assert [(r.video_id, r.group) for r in records] == [("clips/a1", "")]


@pytest.mark.parametrize(
    "lines, line, words",
    [
        (["video,label,split,camera", "a.mp4,x,train,1"], 1, ["unknown column", "camera"]),
        (["video,label", "a.mp4,x"], 1, ["lacks", "split"]),
        (["video,label,split", "clips/a1.mp4,walk,train", "clips/b1.mp4,run,val"], 3, ["train, test, unused", "'val'"]),
        (["video,label,split", "clips/a1.mp4,walk"], 2, ["expected 3 fields", "found 2"]),
        (["video,label,split", "clips/a1.mp4,,train"], 2, ["empty label"]),
        (["video,label,split", "clips/a1.mp4,walk,train", "clips/a1.mp4,run,test"], 3, ["duplicate", "line 2"]),
        (["video,label,split", "clips/a1.mp4,walk,train", "", "clips/gone.mp4,run,test"], 4, ["clips/gone", "found"]),
        (["video,label,split"], None, ["no videos"]),
        ([], None, ["empty"]),
    ],
)
def test_csv_malformed(tmp_path, lines, line, words):
    make_csv(tmp_path)
    path = write(tmp_path / "data" / "bad.csv", lines)
    raises_at(lambda: read_csv_manifest(path), path, line, *words)


def test_csv_skip_and_no_train(tmp_path):
    make_csv(tmp_path)
    path = write(tmp_path / "data" / "m.csv", ["video,label,split", "clips/a1.mp4,walk,test", "gone.mp4,run,train"])
    records, missing = read_csv_manifest(path, on_missing="skip")
    assert [r.video_id for r in records] == ["clips/a1"]
    assert missing == [Missing("gone", os.path.abspath(tmp_path / "data/gone.mp4"), f"{path}:3")]
    cfg = dataset_cfg(format="csv", manifest=str(path), on_missing="skip")
    raises_at(lambda: load_dataset(cfg), path, None, "no training videos")


def test_demo_manifest_reads_what_the_generator_wrote(tmp_path):
    """The manifest job reads the demo's videos and UCF101-style annotations as written; they hold what
    the workflow planned before the demo job ran."""
    from cocon.config import load_config
    from cocon.sources import demo

    cfg = load_config(
        overrides={
            "output_dir": str(tmp_path),
            "demo": {"classes": 2, "groups_per_class": 3, "clips_per_group": 2, "test_groups": 1, "frames": 8},
        }
    )
    with pytest.raises(ManifestError):
        load_dataset(cfg)  # nothing written yet
    demo.generate(cfg)
    records, missing = load_dataset(cfg)
    assert records == load_dataset(cfg, plan_demo=True)[0] == demo.plan(cfg) and missing == []
    assert len(records) == 12 and {r.splits["1"] for r in records} == {"train", "test"}


# ----------------------------------------------------------------------------------------------
# command line


def run_cli(tmp_path: Path, dataset: dict) -> subprocess.CompletedProcess:
    import yaml

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"dataset": dataset, "shards": {"videos_per_shard": 2}}))
    out = tmp_path / "results/manifest"
    return run_cocon(
        *("manifest", "--config", cfg, "--out", out / "manifest.tsv", "--missing", out / "missing.tsv"),
        cwd=tmp_path,
        timeout=60,
    )


def test_cli(tmp_path):
    csv_path = make_csv(tmp_path)
    (tmp_path / "data/clips/b1.mp4").unlink()
    p = run_cli(tmp_path, {"format": "csv", "manifest": str(csv_path), "on_missing": "skip"})
    assert p.returncode == 0, p.stderr
    out = tmp_path / "results/manifest"
    records = read_manifest(out / "manifest.tsv")
    assert len(records) == 3 and {r.video_id for r in records} >= {"clips/a1", "sub/c1"}
    assert (out / "manifest.tsv").read_text().splitlines()[1].endswith("\t00000")
    lines = (out / "missing.tsv").read_text().splitlines()
    assert lines == ["video_id\texpected\tsource", f"clips/b1\t{tmp_path / 'data/clips/b1.mp4'}\t{csv_path}:3"]
    assert not list(out.glob("*.partial"))

    p = run_cli(tmp_path, {"format": "csv", "manifest": str(csv_path)})
    assert p.returncode == 2
    assert f"{csv_path}:3" in p.stderr and "clips/b1" in p.stderr and "Traceback" not in p.stderr

    p = run_cli(tmp_path, {"format": "csv", "manifest": str(csv_path), "bogus": 1})
    assert p.returncode == 2 and "dataset.bogus" in p.stderr
