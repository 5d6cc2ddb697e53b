"""The generic CSV list: columns video,label,split[,group], video paths relative to a root."""

from __future__ import annotations

import os

from cocon.sources.annotations import (
    Listing,
    Missing,
    absent,
    check_on_missing,
    check_root,
    columns,
    csv_rows,
    done,
    gc_paused,
)
from cocon.sources.records import ROLES, ManifestError, VideoRecord


@gc_paused
def read_csv_manifest(csv_path, root=None, on_missing="error") -> tuple[list[VideoRecord], list[Missing]]:
    """A CSV with columns video,label,split[,group]; video paths relative to root (default: the CSV's folder)."""
    check_on_missing(on_missing)
    path = os.fspath(csv_path)
    base = os.path.abspath(root if root is not None else os.path.dirname(os.path.abspath(path)))
    header, lines = csv_rows(path)
    col = columns(path, header, ("video", "label", "split"), ("group",), strict=True)
    width = len(header[1])
    i_video, i_label, i_split, i_group = col["video"], col["label"], col["split"], col.get("group")
    rows = []
    seen: dict[str, int] = {}
    for n, row in lines:
        if len(row) != width:
            raise ManifestError(path, n, f"expected {width} fields as in the header, found {len(row)}")
        video, label, split = row[i_video].strip(), row[i_label].strip(), row[i_split].strip()
        if not video:
            raise ManifestError(path, n, "empty video path")
        if not label:
            raise ManifestError(path, n, "empty label")
        if split not in ROLES:
            raise ManifestError(path, n, f"split must be one of {', '.join(ROLES)}, not {split!r}")
        if os.path.isabs(video):
            full = os.path.abspath(video)
            rel = os.path.relpath(full, base)
            inside = not (rel == os.pardir or rel.startswith(os.pardir + os.sep))
            vid = os.path.splitext(rel if inside else full)[0]
        else:
            full = os.path.abspath(os.path.join(base, video))
            vid = os.path.splitext(os.path.normpath(video))[0]
        vid = vid.replace(os.sep, "/")
        if vid in seen:
            raise ManifestError(path, n, f"duplicate video {vid} (first listed at line {seen[vid]})")
        seen[vid] = n
        group = row[i_group].strip() if i_group is not None else ""
        rows.append((vid, full, label, group, split, n))
    if not rows:
        raise ManifestError(path, None, "no videos listed (only a header)")

    if root is not None:
        check_root(base)
    index = {c: i for i, c in enumerate(sorted({r[2] for r in rows}))}
    records, missing = [], []
    listing = Listing()
    for vid, full, label, group, split, n in rows:
        if not listing.exists(full):
            absent(on_missing, missing, path, n, vid, full)
            continue
        records.append(VideoRecord(vid, full, label, index[label], group, {"1": split}))
    return done(records, missing, path)
