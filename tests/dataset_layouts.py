"""Stand-in annotation trees of the public datasets for the ingest and recipe tests (test_ingest,
test_recipes): UCF101, HMDB51 and Kinetics-400 annotation files in their real formats (CRLF endings, blank
lines, reordered columns) over empty video files, and the write/touch helpers that make them."""

from __future__ import annotations

from pathlib import Path


def write(path: Path, lines: list[str], eol: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + eol for line in lines).encode("utf-8"))
    return path


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


UCF_CLASSES = ["ApplyEyeMakeup", "Archery", "Basketball"]
UCF_VIDEOS = [
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c02.avi",
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi",
    "Archery/v_Archery_g01_c01.avi",
    "Archery/v_Archery_g02_c01.avi",
    "Basketball/v_Basketball_g01_c01.avi",
    "Basketball/odd_name.avi",
]


def make_ucf(tmp_path: Path) -> tuple[Path, Path]:
    """Three classes; split 1: g01 train, the rest test; split 2: g02 train, g01 test, odd_name unused."""
    root, ann = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    for v in UCF_VIDEOS:
        touch(root / v)
    # real UCF101 annotation files use CRLF line endings; add a blank line and trailing blanks too
    write(ann / "classInd.txt", [f"{i} {c}" for i, c in enumerate(UCF_CLASSES, 1)] + [""], eol="\r\n")
    cid = {c: i for i, c in enumerate(UCF_CLASSES, 1)}

    def lines(videos, labelled):
        return [f"{v} {cid[v.split('/')[0]]}  " if labelled else v for v in videos]

    g01 = [v for v in UCF_VIDEOS if "_g01_" in v]
    rest = [v for v in UCF_VIDEOS if "_g01_" not in v]
    g02 = [v for v in UCF_VIDEOS if "_g02_" in v]
    write(ann / "trainlist01.txt", lines(g01, True), eol="\r\n")
    write(ann / "testlist01.txt", lines(rest, False), eol="\r\n")
    write(ann / "trainlist02.txt", lines(g02, True), eol="\r\n")
    write(ann / "testlist02.txt", [""] + lines(g01, False), eol="\r\n")
    return root, ann


def make_hmdb(tmp_path: Path) -> tuple[Path, Path]:
    root, ann = tmp_path / "hmdb51", tmp_path / "testTrainMulti_7030_splits"
    videos = {
        "brush_hair": ["a_brush_hair_0.avi", "b_brush_hair_1.avi", "c_brush_hair_2.avi"],
        "cartwheel": ["a_cartwheel_0.avi", "b_cartwheel_1.avi"],
    }
    for cls, names in videos.items():
        for n in names:
            touch(root / cls / n)
    # split 1: 1,2,0 ; split 2: 2,1 and the last video not listed at all
    split1 = ["a_brush_hair_0.avi 1 ", "b_brush_hair_1.avi 2 ", "c_brush_hair_2.avi 0 "]
    write(ann / "brush_hair_test_split1.txt", split1, "\r\n")
    write(ann / "brush_hair_test_split2.txt", ["a_brush_hair_0.avi 2", "", "b_brush_hair_1.avi 1"])
    write(ann / "cartwheel_test_split1.txt", ["a_cartwheel_0.avi 1", "b_cartwheel_1.avi 2"])
    write(ann / "cartwheel_test_split2.txt", ["a_cartwheel_0.avi 2", "b_cartwheel_1.avi 1"])
    write(ann / "README.txt", ["not a split file"])
    return root, ann


K_HEADER = "label,youtube_id,time_start,time_end,split,is_cc"


def make_kinetics(tmp_path: Path) -> tuple[Path, Path]:
    root, ann = tmp_path / "k400", tmp_path / "k400_ann"
    write(
        ann / "train.csv",
        [
            K_HEADER,
            "abseiling,--abc_defgh,14,24,train,0",
            '"air drumming",xyz12345678,0.0,10.0,train,0',
            "abseiling,AAAAAAAAAAA,3,13,train,1",
        ],
    )
    # no split column: the role comes from the file name; columns in another order
    write(ann / "validate.csv", ["youtube_id,label,time_end,time_start", "BBBBBBBBBBB,air drumming,110,100"], "\r\n")
    write(ann / "test.csv", [K_HEADER, ",CCCCCCCCCCC,0,10,test,0", "abseiling,DDDDDDDDDDD,5,15,test,0"])
    touch(root / "train/abseiling/--abc_defgh_000014_000024.mp4")
    touch(root / "train/air drumming/xyz12345678_000000_000010.MKV")
    touch(root / "AAAAAAAAAAA_000003_000013.webm")
    touch(root / "val/deep/er/BBBBBBBBBBB_000100_000110.mp4")
    touch(root / "test/DDDDDDDDDDD_000005_000015.mp4")
    touch(root / "test/DDDDDDDDDDD_000005_000015.txt")  # not a video
    return root, ann
