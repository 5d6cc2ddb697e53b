"""UCF101 annotations: classInd.txt, trainlist0N.txt and testlist0N.txt (N = 1..3)."""

from __future__ import annotations

import os
import re

from cocon.sources.annotations import (
    Listing,
    Missing,
    absent,
    check_on_missing,
    check_root,
    done,
    gc_paused,
    text_lines,
)
from cocon.sources.records import ManifestError, VideoRecord

_UCF_GROUP = re.compile(r"^v_.+_g(\d+)_c\d+$")


def _ucf_classes(path: str) -> dict[str, int]:
    """classInd.txt -> {class name: 0-based index}."""
    by_name: dict[str, tuple[int, int]] = {}
    by_id: dict[int, tuple[str, int]] = {}
    for n, f in text_lines(path):
        if len(f) != 2:
            raise ManifestError(path, n, f"expected '<class id> <ClassName>', found {len(f)} field(s)")
        try:
            cid = int(f[0])
        except ValueError:
            raise ManifestError(path, n, f"class id must be an integer, not {f[0]!r}") from None
        if cid < 1:
            raise ManifestError(path, n, f"class id must be 1 or more (ids are 1-based), not {cid}")
        if f[1] in by_name:
            raise ManifestError(path, n, f"class {f[1]} already listed at line {by_name[f[1]][1]}")
        if cid in by_id:
            raise ManifestError(path, n, f"class id {cid} already used by {by_id[cid][0]} at line {by_id[cid][1]}")
        by_name[f[1]] = (cid, n)
        by_id[cid] = (f[1], n)
    gaps = sorted(set(range(1, len(by_id) + 1)) - set(by_id))
    if gaps:
        raise ManifestError(path, None, f"class ids must run 1..{len(by_id)} without gaps; id {gaps[0]} is missing")
    return {name: cid - 1 for name, (cid, _) in by_name.items()}


@gc_paused
def read_ucf101(root, annotations, on_missing="error") -> tuple[list[VideoRecord], list[Missing]]:
    """UCF101: classInd.txt + trainlist0N.txt / testlist0N.txt (N = 1..3) in `annotations`."""
    check_on_missing(on_missing)
    root = os.path.abspath(root)
    ann = os.fspath(annotations)
    if not os.path.isdir(ann):
        raise ManifestError(
            ann, None, "UCF101 annotation folder not found (expected classInd.txt, trainlist01.txt, ...)"
        )
    classes = _ucf_classes(os.path.join(ann, "classInd.txt"))

    present = []
    for k in ("1", "2", "3"):
        train = os.path.join(ann, f"trainlist0{k}.txt")
        test = os.path.join(ann, f"testlist0{k}.txt")
        has_train, has_test = os.path.isfile(train), os.path.isfile(test)
        if has_train and has_test:
            present.append((k, train, test))
        elif has_train or has_test:
            lacking = test if has_train else train
            other = train if has_train else test
            raise ManifestError(
                lacking, None, f"annotation file not found (split {k}: {os.path.basename(other)} exists without it)"
            )
        elif k == "1":
            raise ManifestError(
                train,
                None,
                "annotation file not found (UCF101 needs at least split 1: trainlist01.txt and testlist01.txt)",
            )

    videos: dict[str, dict] = {}  # video_id -> {rel, cls, splits, file, line of its first listing}
    for k, train, test in present:
        seen: dict[str, str] = {}  # video_id -> "file:line" within this split
        for path, labelled in ((train, True), (test, False)):
            want = 2 if labelled else 1
            form = "'<Class>/<video>.avi <class id>'" if labelled else "'<Class>/<video>.avi'"
            for n, f in text_lines(path):
                if len(f) != want:
                    raise ManifestError(path, n, f"expected {form}, found {len(f)} field(s)")
                rel = f[0]
                parts = rel.split("/")
                if len(parts) != 2 or not parts[0] or not parts[1]:
                    raise ManifestError(path, n, f"expected a path '<Class>/<video>.avi', not {rel!r}")
                cls = parts[0]
                if cls not in classes:
                    raise ManifestError(path, n, f"unknown class {cls!r} (not in classInd.txt)")
                if labelled:
                    try:
                        cid = int(f[1])
                    except ValueError:
                        raise ManifestError(path, n, f"class id must be an integer, not {f[1]!r}") from None
                    if not 1 <= cid <= len(classes):
                        raise ManifestError(path, n, f"unknown class id {cid} (classInd.txt has ids 1..{len(classes)})")
                    if cid != classes[cls] + 1:
                        named = next(c for c, i in classes.items() if i == cid - 1)
                        raise ManifestError(
                            path,
                            n,
                            f"class id {cid} ({named}) disagrees with the folder {cls}"
                            f" (its classInd.txt id is {classes[cls] + 1})",
                        )
                vid = os.path.splitext(rel)[0]
                if vid in seen:
                    raise ManifestError(path, n, f"duplicate video {vid} in split {k} (first listed at {seen[vid]})")
                seen[vid] = f"{path}:{n}"
                v = videos.get(vid)
                if v is None:
                    v = videos[vid] = {"rel": rel, "cls": cls, "splits": {}, "file": path, "line": n}
                v["splits"][k] = "train" if labelled else "test"
    if not videos:
        raise ManifestError(ann, None, "no videos listed")

    check_root(root)
    records, missing = [], []
    listing = Listing()
    for vid, v in videos.items():
        path = os.path.join(root, v["rel"])
        if not listing.exists(path):
            absent(on_missing, missing, v["file"], v["line"], vid, path)
            continue
        m = _UCF_GROUP.match(os.path.basename(vid))
        splits = {k: v["splits"].get(k, "unused") for k, _, _ in present}
        records.append(
            VideoRecord(vid, path, v["cls"], classes[v["cls"]], f"{v['cls']}_g{m.group(1)}" if m else "", splits)
        )
    return done(records, missing, ann)
