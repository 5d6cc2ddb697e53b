"""HMDB51 annotations: <class>_test_split<N>.txt files with lines '<video>.avi <0|1|2>'."""

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

_HMDB_FILE = re.compile(r"^(.+)_test_split(\d+)\.txt$")
_HMDB_ROLES = {"0": "unused", "1": "train", "2": "test"}


@gc_paused
def read_hmdb51(root, annotations, on_missing="error") -> tuple[list[VideoRecord], list[Missing]]:
    """HMDB51: <class>_test_split<N>.txt files in `annotations`, lines '<video>.avi <0|1|2>'."""
    check_on_missing(on_missing)
    root = os.path.abspath(root)
    ann = os.fspath(annotations)
    if not os.path.isdir(ann):
        raise ManifestError(ann, None, "HMDB51 annotation folder not found (expected <class>_test_split<N>.txt files)")
    files: dict[tuple[str, str], str] = {}
    for name in sorted(os.listdir(ann)):
        m = _HMDB_FILE.match(name)
        if not m:
            continue
        if m.group(2) not in ("1", "2", "3"):
            raise ManifestError(os.path.join(ann, name), None, f"split number must be 1, 2 or 3, not {m.group(2)}")
        files[(m.group(1), m.group(2))] = os.path.join(ann, name)
    if not files:
        raise ManifestError(ann, None, "no HMDB51 split files found (expected <class>_test_split<N>.txt, N = 1..3)")
    classes = sorted({c for c, _ in files})
    present = sorted({k for _, k in files})
    for c in classes:
        for k in present:
            if (c, k) not in files:
                raise ManifestError(
                    os.path.join(ann, f"{c}_test_split{k}.txt"),
                    None,
                    f"annotation file not found (other classes have split {k})",
                )

    videos: dict[str, dict] = {}  # video stem -> {name, cls, splits, file, line}
    for (cls, k), path in sorted(files.items()):
        seen: dict[str, int] = {}
        for n, f in text_lines(path):
            if len(f) != 2:
                raise ManifestError(path, n, f"expected '<video>.avi <0|1|2>', found {len(f)} field(s)")
            name, code = f
            if "/" in name:
                raise ManifestError(path, n, f"expected a bare file name '<video>.avi', not {name!r}")
            if code not in _HMDB_ROLES:
                raise ManifestError(path, n, f"split value must be 0 (unused), 1 (train) or 2 (test), not {code!r}")
            stem = os.path.splitext(name)[0]
            if stem in seen:
                raise ManifestError(path, n, f"duplicate video {name} (first listed at line {seen[stem]})")
            seen[stem] = n
            v = videos.get(stem)
            if v is None:
                v = videos[stem] = {"name": name, "cls": cls, "splits": {}, "file": path, "line": n}
            elif v["cls"] != cls:
                raise ManifestError(
                    path,
                    n,
                    f"video {name} is listed under class {cls} here but under {v['cls']} at {v['file']}:{v['line']}",
                )
            v["splits"][k] = _HMDB_ROLES[code]

    index = {c: i for i, c in enumerate(classes)}
    check_root(root)
    records, missing = [], []
    listing = Listing()
    for stem, v in videos.items():
        vid = f"{v['cls']}/{stem}"
        path = os.path.join(root, v["cls"], v["name"])
        if not listing.exists(path):
            absent(on_missing, missing, v["file"], v["line"], vid, path)
            continue
        splits = {k: v["splits"].get(k, "unused") for k in present}
        records.append(VideoRecord(vid, path, v["cls"], index[v["cls"]], "", splits))
    return done(records, missing, ann)
