"""Shared helpers of the annotation readers (ucf101, hmdb51, kinetics, csv_list): reading text and CSV
annotation files, column checks, the missing-video policy and the sorted result. Every problem is a
`ManifestError` naming the file and 1-based line."""

from __future__ import annotations

import csv
import functools
import gc
import os
from dataclasses import dataclass

from cocon.sources.records import ManifestError

ON_MISSING = ("error", "skip")


@dataclass(frozen=True)
class Missing:
    """A listed video absent on disk (kept when dataset.on_missing == "skip")."""

    video_id: str
    expected: str  # where it was looked for
    source: str  # "file:line" of the annotation line that listed it


def gc_paused(fn):
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


def check_on_missing(on_missing: str) -> None:
    """A ValueError unless `on_missing` is one of ON_MISSING."""
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {', '.join(ON_MISSING)}, not {on_missing!r}")


def text_lines(path: str):
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


def csv_rows(path: str):
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


def columns(path: str, header: tuple[int, list[str]], required: tuple, optional: tuple, strict: bool):
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


class Listing:
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


def check_root(root: str) -> None:
    """A ManifestError if the video folder does not exist."""
    if not os.path.isdir(root):
        raise ManifestError(root, None, "video folder (dataset.root) not found")


def absent(on_missing, missing, file, line, video_id, expected):
    """Raise or record a listed video that is not on disk."""
    if on_missing == "error":
        raise ManifestError(file, line, f"video {video_id} not found (expected {expected})")
    missing.append(Missing(video_id, expected, f"{file}:{line}"))


def done(records, missing, where):
    """Sort the result; a dataset whose every video is missing is an error even with skip."""
    if not records:
        example = missing[0].expected if missing else "?"
        raise ManifestError(
            where, None, f"none of the {len(missing)} listed videos exist on disk (first expected at {example})"
        )
    records.sort(key=lambda r: r.video_id)
    missing.sort(key=lambda m: m.video_id)
    return records, missing


def parse_seconds(text: str, name: str, path: str, line: int) -> int:
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
