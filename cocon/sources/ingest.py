"""Read a dataset's official annotation files into `VideoRecord`s (cocon/sources/records.py).

Formats: UCF101 (classInd.txt, trainlist0N.txt, testlist0N.txt), HMDB51 (<class>_test_splitN.txt),
Kinetics-400 (the official CSVs), a generic CSV (video,label,split[,group]) and the demo. Every
problem in the annotations is a `ManifestError` naming the file and 1-based line.

Command line: ``cocon manifest --config config.yaml --out manifest.tsv [--missing missing.tsv]``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import gc
import os
import re
import sys
from dataclasses import dataclass

from cocon.sources.records import ROLES, ManifestError, VideoRecord

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
ON_MISSING = ("error", "skip")

_UCF_GROUP = re.compile(r"^v_.+_g(\d+)_c\d+$")
_HMDB_FILE = re.compile(r"^(.+)_test_split(\d+)\.txt$")
_BAD_ID = re.compile(r"[\s/\\]")
_HMDB_ROLES = {"0": "unused", "1": "train", "2": "test"}
# Kinetics split names -> role in the manifest (the labelled validation set is the evaluation set).
_K400_ROLES = {"train": "train", "val": "test", "validate": "test", "validation": "test", "test": "unused"}


@dataclass(frozen=True)
class Missing:
    """A listed video absent on disk (kept when dataset.on_missing == "skip")."""

    video_id: str
    expected: str  # where it was looked for
    source: str  # "file:line" of the annotation line that listed it


# ----------------------------------------------------------------------------------------------
# helpers


def _gc_paused(fn):
    """Run `fn` with the cyclic garbage collector off: building ~10^5 small objects otherwise
    triggers repeated full collections that double the load time of a large manifest."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper


def _check_on_missing(on_missing: str) -> None:
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {', '.join(ON_MISSING)}, not {on_missing!r}")


def _text_lines(path: str):
    """(line number, fields) for each non-blank line of a whitespace-separated text file."""
    if not os.path.isfile(path):
        raise ManifestError(path, None, "annotation file not found")
    with open(path, "rb") as fh:
        data = fh.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    out = []
    for n, raw in enumerate(data.splitlines(), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ManifestError(path, n, "line is not valid UTF-8 text") from None
        fields = text.split()
        if fields:
            out.append((n, fields))
    if not out:
        raise ManifestError(path, None, "file is empty (no annotation lines)")
    return out


def _csv_rows(path: str):
    """(header, [(line number, row), ...]) of a CSV file; header fields stripped and lower-cased."""
    if not os.path.isfile(path):
        raise ManifestError(path, None, "annotation file not found")
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = None
            for row in reader:
                if not row or not "".join(row).strip():
                    continue
                if header is None:
                    header = (reader.line_num, [f.strip().lower() for f in row])
                else:
                    rows.append((reader.line_num, row))
    except UnicodeDecodeError:
        raise ManifestError(path, None, "file is not valid UTF-8 text") from None
    except csv.Error as e:
        raise ManifestError(path, None, f"not a readable CSV file ({e})") from None
    if header is None:
        raise ManifestError(path, None, "file is empty (expected a CSV header line)")
    return header, rows


def _columns(path: str, header: tuple[int, list[str]], required: tuple, optional: tuple, strict: bool):
    """Map column name -> index; checks required (and, if `strict`, unknown) columns."""
    line, names = header
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ManifestError(path, line, f"column '{name}' appears twice in the header")
        seen[name] = i
    lacking = [c for c in required if c not in seen]
    if lacking:
        raise ManifestError(path, line, f"header lacks column(s) {', '.join(lacking)} (expected {','.join(required)})")
    if strict:
        extra = [c for c in names if c not in required and c not in optional]
        if extra:
            allowed = ",".join(required + optional)
            raise ManifestError(path, line, f"unknown column(s) {', '.join(extra)} (allowed: {allowed})")
    return seen


class _Listing:
    """Answers "does this file exist?" with one os.listdir per folder instead of a stat per file."""

    def __init__(self):
        self._names: dict[str, frozenset] = {}

    def exists(self, path: str) -> bool:
        folder, name = os.path.split(path)
        names = self._names.get(folder)
        if names is None:
            try:
                names = frozenset(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                names = frozenset()
            self._names[folder] = names
        return name in names


def _check_root(root: str) -> None:
    if not os.path.isdir(root):
        raise ManifestError(root, None, "video folder (dataset.root) not found")


def _absent(on_missing, missing, file, line, video_id, expected):
    """Raise or record a listed video that is not on disk."""
    if on_missing == "error":
        raise ManifestError(file, line, f"video {video_id} not found (expected {expected})")
    missing.append(Missing(video_id, expected, f"{file}:{line}"))


def _done(records, missing, where):
    """Sort the result; a dataset whose every video is missing is an error even with skip."""
    if not records:
        example = missing[0].expected if missing else "?"
        raise ManifestError(
            where, None, f"none of the {len(missing)} listed videos exist on disk (first expected at {example})"
        )
    records.sort(key=lambda r: r.video_id)
    missing.sort(key=lambda m: m.video_id)
    return records, missing


def _time(text: str, name: str, path: str, line: int) -> int:
    """A non-negative whole number of seconds, possibly written as a float ("14.0")."""
    s = text.strip()
    try:
        value = int(s)
    except ValueError:
        try:
            f = float(s)
        except ValueError:
            raise ManifestError(path, line, f"{name} must be a whole number of seconds, not {text!r}") from None
        if not f.is_integer():
            raise ManifestError(path, line, f"{name} must be a whole number of seconds, not {text!r}") from None
        value = int(f)
    if value < 0:
        raise ManifestError(path, line, f"{name} must not be negative (found {text!r})")
    return value


# ----------------------------------------------------------------------------------------------
# UCF101


def _ucf_classes(path: str) -> dict[str, int]:
    """classInd.txt -> {class name: 0-based index}."""
    by_name: dict[str, tuple[int, int]] = {}
    by_id: dict[int, tuple[str, int]] = {}
    for n, f in _text_lines(path):
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


@_gc_paused
def read_ucf101(root, annotations, on_missing="error") -> tuple[list[VideoRecord], list[Missing]]:
    """UCF101: classInd.txt + trainlist0N.txt / testlist0N.txt (N = 1..3) in `annotations`."""
    _check_on_missing(on_missing)
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
            for n, f in _text_lines(path):
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

    _check_root(root)
    records, missing = [], []
    listing = _Listing()
    for vid, v in videos.items():
        path = os.path.join(root, v["rel"])
        if not listing.exists(path):
            _absent(on_missing, missing, v["file"], v["line"], vid, path)
            continue
        m = _UCF_GROUP.match(os.path.basename(vid))
        splits = {k: v["splits"].get(k, "unused") for k, _, _ in present}
        records.append(
            VideoRecord(vid, path, v["cls"], classes[v["cls"]], f"{v['cls']}_g{m.group(1)}" if m else "", splits)
        )
    return _done(records, missing, ann)


# ----------------------------------------------------------------------------------------------
# HMDB51


@_gc_paused
def read_hmdb51(root, annotations, on_missing="error") -> tuple[list[VideoRecord], list[Missing]]:
    """HMDB51: <class>_test_split<N>.txt files in `annotations`, lines '<video>.avi <0|1|2>'."""
    _check_on_missing(on_missing)
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
        for n, f in _text_lines(path):
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
    _check_root(root)
    records, missing = [], []
    listing = _Listing()
    for stem, v in videos.items():
        vid = f"{v['cls']}/{stem}"
        path = os.path.join(root, v["cls"], v["name"])
        if not listing.exists(path):
            _absent(on_missing, missing, v["file"], v["line"], vid, path)
            continue
        splits = {k: v["splits"].get(k, "unused") for k in present}
        records.append(VideoRecord(vid, path, v["cls"], index[v["cls"]], "", splits))
    return _done(records, missing, ann)


# ----------------------------------------------------------------------------------------------
# Kinetics-400


def _index_videos(root: str):
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


@_gc_paused
def read_kinetics400(root, annotations, on_missing="error") -> tuple[list[VideoRecord], list[Missing]]:
    """Kinetics-400: official CSVs (label,youtube_id,time_start,time_end[,split][,is_cc]); files anywhere under root."""
    _check_on_missing(on_missing)
    root = os.path.abspath(root)
    ann = os.fspath(annotations)
    rows = []  # (video_id, youtube_id, label, role, file, line)
    seen: dict[str, int] = {}  # video_id -> index in rows
    for path in _k400_files(ann):
        header, lines = _csv_rows(path)
        names = header[1]
        # An old-style test list without a label column is accepted: its rows are skipped as unlabelled.
        required = ("label", "youtube_id", "time_start", "time_end")
        if "label" not in names and "youtube_id" in names:
            required = required[1:]
        col = _columns(path, header, required, ("split", "is_cc"), strict=False)
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
                start = _time(row[i_start], "time_start", path, n)
                end = _time(row[i_end], "time_end", path, n)
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

    _check_root(root)
    index = {c: i for i, c in enumerate(sorted({r[2] for r in rows}))}
    found, twice = _index_videos(root)
    pattern = os.path.join(root, "**", "{}.{{" + ",".join(e[1:] for e in VIDEO_EXTENSIONS) + "}}")
    records, missing = [], []
    for vid, yid, label, role, path, n in rows:
        video = found.get(vid)
        if video is None:
            _absent(on_missing, missing, path, n, vid, pattern.format(vid))
            continue
        if vid in twice:
            raise ManifestError(path, n, f"clip {vid} found more than once under root: {' and '.join(twice[vid])}")
        records.append(VideoRecord(vid, video, label, index[label], yid, {"1": role}))
    return _done(records, missing, ann)


# ----------------------------------------------------------------------------------------------
# generic CSV


@_gc_paused
def read_csv_manifest(csv_path, root=None, on_missing="error") -> tuple[list[VideoRecord], list[Missing]]:
    """A CSV with columns video,label,split[,group]; video paths relative to root (default: the CSV's folder)."""
    _check_on_missing(on_missing)
    path = os.fspath(csv_path)
    base = os.path.abspath(root if root is not None else os.path.dirname(os.path.abspath(path)))
    header, lines = _csv_rows(path)
    col = _columns(path, header, ("video", "label", "split"), ("group",), strict=True)
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
        _check_root(base)
    index = {c: i for i, c in enumerate(sorted({r[2] for r in rows}))}
    records, missing = [], []
    listing = _Listing()
    for vid, full, label, group, split, n in rows:
        if not listing.exists(full):
            _absent(on_missing, missing, path, n, vid, full)
            continue
        records.append(VideoRecord(vid, full, label, index[label], group, {"1": split}))
    return _done(records, missing, path)


# ----------------------------------------------------------------------------------------------
# dispatch and command line


def load_dataset(cfg: dict, plan_demo: bool = False) -> tuple[list[VideoRecord], list[Missing]]:
    """Records (sorted by video_id) and missing videos of the dataset configured in cfg['dataset']. The demo
    is read like UCF101 from what its generator wrote (cocon.sources.demo), or, with `plan_demo`, taken from
    the generator's plan: the workflow's view of it before the demo job has run."""
    ds = cfg["dataset"]
    fmt = ds["format"]
    on_missing = ds.get("on_missing", "error")
    if fmt == "demo":
        from cocon.sources import demo

        if plan_demo:
            return demo.plan(cfg), []
        records, missing = read_ucf101(demo.video_root(cfg), demo.annotation_dir(cfg), "error")
        if not os.path.isabs(cfg["output_dir"]):  # paths under the run's folder, as planned: the run moves whole
            records = [dataclasses.replace(r, path=os.path.relpath(r.path)) for r in records]
        return records, missing
    where = ds["manifest"]
    if fmt == "ucf101":
        records, missing = read_ucf101(ds["root"], where, on_missing)
    elif fmt == "hmdb51":
        records, missing = read_hmdb51(ds["root"], where, on_missing)
    elif fmt == "kinetics400":
        records, missing = read_kinetics400(ds["root"], where, on_missing)
    elif fmt == "csv":
        records, missing = read_csv_manifest(where, ds.get("root"), on_missing)
    else:
        raise ValueError(f"unknown dataset.format {fmt!r}")

    split = str(ds.get("split", 1))
    available = sorted({k for r in records for k in r.splits})
    if split not in available:
        expected = {
            "ucf101": f" (expected trainlist0{split}.txt and testlist0{split}.txt)",
            "hmdb51": f" (expected <class>_test_split{split}.txt files)",
        }.get(fmt, "")
        raise ManifestError(
            where,
            None,
            f"dataset.split is {split} but these annotations define only split(s) {', '.join(available)}{expected}",
        )
    if not any(r.splits.get(split) == "train" for r in records):
        raise ManifestError(where, None, f"split {split} has no training videos")
    return records, missing


def annotation_files(cfg: dict) -> list[str]:
    """The annotation files `load_dataset` reads for this config (the manifest job's inputs)."""
    ds = cfg["dataset"]
    fmt, where = ds["format"], ds["manifest"]
    if fmt == "demo":
        from cocon.sources import demo

        return [os.path.join(demo.annotation_dir(cfg), "classInd.txt")]
    if fmt == "csv" or os.path.isfile(where):
        return [os.path.abspath(where)]
    pattern = {
        "ucf101": r"classInd\.txt|(train|test)list0[123]\.txt",
        "hmdb51": r".+_test_split[123]\.txt",
        "kinetics400": r".+\.csv",
    }[fmt]
    return sorted(os.path.join(os.path.abspath(where), f) for f in os.listdir(where) if re.fullmatch(pattern, f))


def _replace_into(path: str, write) -> None:
    """Call write(temporary path), then move the result into place (cocon.files.atomic_path)."""
    from cocon.files import atomic_path

    with atomic_path(path) as tmp:
        write(str(tmp))


def write_missing(path: str, missing: list[Missing]) -> None:
    """TSV of missing videos with a header (video_id, expected, source); header-only when none."""

    def write(p):
        with open(p, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(("video_id", "expected", "source"))
            for m in missing:
                w.writerow((m.video_id, m.expected, m.source))

    _replace_into(path, write)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cocon manifest``."""
    import yaml

    from cocon.config import ConfigError, add_config_args, config_from_args
    from cocon.sources.records import assign_shards, write_manifest

    ap = argparse.ArgumentParser(prog="cocon manifest", description="Write the dataset manifest (TSV).")
    add_config_args(ap)
    ap.add_argument("--out", required=True, help="manifest TSV to write")
    ap.add_argument("--missing", help="TSV listing videos absent on disk (written even when empty)")
    args = ap.parse_args(argv)
    try:
        cfg = config_from_args(args)
        records, missing = load_dataset(cfg)
        shards = assign_shards(records, cfg["shards"]["videos_per_shard"])
    except (ManifestError, ConfigError, OSError, yaml.YAMLError) as e:
        print(f"cocon manifest: error: {e}", file=sys.stderr)
        return 2
    _replace_into(args.out, lambda p: write_manifest(p, shards))
    if args.missing:
        write_missing(args.missing, missing)
    labels = len({r.label for r in records})
    print(
        f"cocon manifest: {len(records)} videos, {labels} classes, {len(shards)} shards, {len(missing)} missing"
        f" -> {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
