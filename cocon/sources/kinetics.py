"""Kinetics-400 annotations: the official CSVs, with the clips found anywhere under the video root."""

from __future__ import annotations

import os
import re

from cocon.sources.annotations import (
    Missing,
    absent,
    check_on_missing,
    check_root,
    columns,
    csv_rows,
    done,
    gc_paused,
    parse_seconds,
)
from cocon.sources.records import ManifestError, VideoRecord

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")

_BAD_ID = re.compile(r"[\s/\\]")
# Kinetics split names -> role in the manifest (the labelled validation set is the evaluation set).
_K400_ROLES = {"train": "train", "val": "test", "validate": "test", "validation": "test", "test": "unused"}


def index_videos(root: str):
    """Walk `root` once: {stem: path} of video files, and {stem: [paths]} for stems seen twice."""
    found: dict[str, str] = {}
    twice: dict[str, list[str]] = {}
    visited = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in visited:  # symlink loops
            continue
        visited.add((st.st_dev, st.st_ino))
        try:
            it = os.scandir(folder)
        except (PermissionError, FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for entry in it:
                name = entry.name
                dot = name.rfind(".")
                stem, ext = name[:dot], name[dot:].lower()
                if dot > 0 and ext in VIDEO_EXTENSIONS:
                    if entry.is_file():
                        if stem in found:
                            twice.setdefault(stem, [found[stem]]).append(entry.path)
                        else:
                            found[stem] = entry.path
                elif entry.is_dir():
                    stack.append(entry.path)
    return found, twice


def _k400_files(annotations: str) -> list[str]:
    """The CSV files to read: `annotations` itself, or every *.csv in that folder."""
    if os.path.isdir(annotations):
        names = sorted(n for n in os.listdir(annotations) if n.lower().endswith(".csv"))
        if not names:
            raise ManifestError(annotations, None, "no *.csv files in the Kinetics annotation folder")
        return [os.path.join(annotations, n) for n in names]
    if not os.path.isfile(annotations):
        raise ManifestError(annotations, None, "Kinetics annotation file or folder not found")
    return [annotations]


def _k400_file_split(path: str) -> str | None:
    """The split a file holds according to its name (train/val/test), or None."""
    name = os.path.basename(path).lower()
    if "train" in name:
        return "train"
    if "val" in name:  # also "validate", "validation"
        return "val"
    if "test" in name:
        return "test"
    return None


@gc_paused
def read_kinetics400(root, annotations, on_missing="error") -> tuple[list[VideoRecord], list[Missing]]:
    """Kinetics-400: official CSVs (label,youtube_id,time_start,time_end[,split][,is_cc]); files anywhere under root."""
    check_on_missing(on_missing)
    root = os.path.abspath(root)
    ann = os.fspath(annotations)
    rows = []  # (video_id, youtube_id, label, role, file, line)
    seen: dict[str, int] = {}  # video_id -> index in rows
    for path in _k400_files(ann):
        header, lines = csv_rows(path)
        names = header[1]
        # An old-style test list without a label column is accepted: its rows are skipped as unlabelled.
        required = ("label", "youtube_id", "time_start", "time_end")
        if "label" not in names and "youtube_id" in names:
            required = required[1:]
        col = columns(path, header, required, ("split", "is_cc"), strict=False)
        width = len(names)
        i_label = col.get("label")
        i_yid, i_start, i_end, i_split = col["youtube_id"], col["time_start"], col["time_end"], col.get("split")
        file_split = _k400_file_split(path)
        if i_split is None and file_split is None:
            raise ManifestError(
                path, None, "no 'split' column, and the file name says neither train, val(idate) nor test"
            )
        for n, row in lines:
            if len(row) != width:
                raise ManifestError(path, n, f"expected {width} fields as in the header, found {len(row)}")
            if i_split is None:
                split = file_split
            else:
                split = row[i_split].strip().lower()
                if split not in _K400_ROLES:
                    raise ManifestError(path, n, f"split must be train, val(idate) or test, not {row[i_split]!r}")
            label = row[i_label].strip() if i_label is not None else ""
            if not label:
                if split == "test":
                    continue
                raise ManifestError(
                    path, n, f"row has no label (only test rows may be unlabelled; this is a {split} row)"
                )
            yid = row[i_yid].strip()
            if not yid or _BAD_ID.search(yid):
                raise ManifestError(path, n, f"bad youtube_id {row[i_yid]!r}")
            try:  # fast path for plain integers
                start, end = int(row[i_start]), int(row[i_end])
                if start < 0 or end < 0:
                    raise ValueError
            except ValueError:
                start = parse_seconds(row[i_start], "time_start", path, n)
                end = parse_seconds(row[i_end], "time_end", path, n)
            if end < start:
                raise ManifestError(path, n, f"time_end {end} is before time_start {start}")
            vid = f"{yid}_{start:06d}_{end:06d}"
            if vid in seen:
                first = rows[seen[vid]]
                raise ManifestError(path, n, f"duplicate clip {vid} (first listed at {first[4]}:{first[5]})")
            seen[vid] = len(rows)
            rows.append((vid, yid, label, _K400_ROLES[split], path, n))
    if not rows:
        raise ManifestError(ann, None, "no labelled clips listed")

    check_root(root)
    index = {c: i for i, c in enumerate(sorted({r[2] for r in rows}))}
    found, twice = index_videos(root)
    pattern = os.path.join(root, "**", "{}.{{" + ",".join(e[1:] for e in VIDEO_EXTENSIONS) + "}}")
    records, missing = [], []
    for vid, yid, label, role, path, n in rows:
        video = found.get(vid)
        if video is None:
            absent(on_missing, missing, path, n, vid, pattern.format(vid))
            continue
        if vid in twice:
            raise ManifestError(path, n, f"clip {vid} found more than once under root: {' and '.join(twice[vid])}")
        records.append(VideoRecord(vid, video, label, index[label], yid, {"1": role}))
    return done(records, missing, ann)
