"""The loader's video table (docs/loader.md, "Videos and roles"): the shards of each view, the videos
usable in every requested view, their roles in the configured split and the validation hold-out, drawn
from the training role (never from the test split), whole groups at a time."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from cocon.data.sampling import rgb_length
from cocon.data.shards import ShardReader
from cocon.sources.records import VideoRecord

__all__ = [
    "ROLES",
    "ClipsError",
    "Video",
    "ShardTable",
    "Partition",
    "discover",
    "frame_map",
    "open_views",
    "video_table",
    "group_id",
    "holdout",
    "flow_bound",
]

ROLES = ("train", "val", "test")

# Root attributes through which a view computed on a frame stride (pose, seg) says which rgb frame its
# index j holds: rgb frame FRAME_OFFSET + j * FRAME_STRIDE. Absent = 1 and 0 (rgb, flow).
FRAME_STRIDE_ATTR = "frame_stride"
FRAME_OFFSET_ATTR = "frame_offset"


class ClipsError(ValueError):
    """Shards that cannot be combined into a multi-view dataset (missing shards, disagreeing rows)."""


# ------------------------------------------------------------------ views and shards


def discover(output_dir: str | Path, views: Sequence[str]) -> dict[str, list[Path]]:
    """Shard files `<output_dir>/shards/<view>/*.h5` of each view, sorted by name. Every view must have
    the same shard names; the error lists the missing ones per view."""
    if not views:
        raise ClipsError("no views requested")
    root = Path(output_dir) / "shards"
    found = {v: sorted((root / v).glob("*.h5")) for v in views}
    empty = [v for v in views if not found[v]]
    if empty:
        raise ClipsError(f"no shards for view(s) {', '.join(empty)} under {root}")
    names = {v: {p.stem for p in found[v]} for v in views}
    every = set().union(*names.values())
    missing = {v: sorted(every - names[v]) for v in views if every - names[v]}
    if missing:
        lines = "; ".join(f"{v} lacks {', '.join(m)}" for v, m in missing.items())
        raise ClipsError(f"views disagree on the shards under {root}: {lines}")
    return found


def frame_map(attrs: dict) -> tuple[int, int]:
    """(stride, offset) of a view from its shard's root attributes: the view's index j holds rgb frame
    offset + j * stride. rgb and flow: (1, 0). The one place where a strided view (pose, seg) plugs in."""
    stride = int(attrs.get(FRAME_STRIDE_ATTR, 1))
    offset = int(attrs.get(FRAME_OFFSET_ATTR, 0))
    if stride < 1 or offset < 0:
        raise ClipsError(f"bad frame map: {FRAME_STRIDE_ATTR}={stride}, {FRAME_OFFSET_ATTR}={offset}")
    return stride, offset


def flow_bound(attrs: dict) -> float | None:
    """The quantisation bound (px) in a flow shard's `params` attribute (None when absent)."""
    params = attrs.get("params")
    try:
        params = json.loads(params) if isinstance(params, str) else (params or {})
        return float(params["bound"])
    except (ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------ video table


@dataclass(frozen=True)
class Video:
    """One video usable for training: status ok in every requested view.

    shard: position in the shard lists; row: row in every view's shard; n_frames: length in rgb frames
    (the minimum over the views, each mapped through `frame_map`)."""

    video_id: str
    label: str
    label_index: int
    group: str
    splits: dict = field(hash=False, compare=True)
    shard: int = 0
    shard_name: str = ""
    row: int = 0
    n_frames: int = 0

    def role(self, split: str | int) -> str:
        return self.splits.get(str(split), "unused")


class ShardTable(NamedTuple):
    """What `open_views` finds in the shards of the requested views."""

    readers: dict[str, list[ShardReader]]  # {view: [reader per shard]}
    videos: list[Video]  # ok in every view, in shard/row order
    names: list[str]  # shard names (file stems)
    maps: dict[str, tuple[int, int]]  # {view: (frame stride, frame offset)}
    rows: list[VideoRecord]  # every row of the shards, failed ones included


def open_views(shards: dict[str, Sequence[str | Path]], views: Sequence[str]) -> ShardTable:
    """Open every shard of `views` and check that they agree (shard lists, row counts, video ids, frame
    map per view); raises ClipsError naming what disagrees."""
    if not views:
        raise ClipsError("no views requested")
    absent = [v for v in views if v not in shards]
    if absent:
        raise ClipsError(f"no shard list for view(s) {', '.join(absent)}")
    names = {v: [Path(p).stem for p in shards[v]] for v in views}
    first = views[0]
    for v in views[1:]:
        if names[v] != names[first]:
            a, b = set(names[first]), set(names[v])
            raise ClipsError(
                f"views {first} and {v} have different shard lists: {v} lacks {sorted(a - b) or 'none'}, "
                f"{first} lacks {sorted(b - a) or 'none'}" + ("" if a != b else " (same names, different order)")
            )
    readers = {v: [ShardReader(p) for p in shards[v]] for v in views}
    maps = {}
    for v in views:
        for r in readers[v]:
            if r.attrs.get("view") != v:
                raise ClipsError(f"{r.path}: holds view {r.attrs.get('view')!r}, expected {v!r}")
        found = {frame_map(r.attrs) for r in readers[v]}
        if len(found) > 1:
            raise ClipsError(f"view {v}: shards disagree on the frame map (stride, offset): {sorted(found)}")
        maps[v] = found.pop() if found else (1, 0)
    videos, rows = [], []
    for s, name in enumerate(names[first]):
        index = {v: readers[v][s].index for v in views}
        n = len(index[first])
        for v in views[1:]:
            if len(index[v]) != n:
                raise ClipsError(f"shard {name}: {first} has {n} rows, {v} has {len(index[v])}")
        for row in range(n):
            ref = index[first][row]
            rows.append(
                VideoRecord(
                    ref["video_id"],
                    ref["path"],
                    ref["label"],
                    int(ref["label_index"]),
                    ref["group"],
                    json.loads(ref["splits"]),
                )
            )
            for v in views[1:]:
                if index[v][row]["video_id"] != ref["video_id"]:
                    raise ClipsError(
                        f"shard {name} row {row}: video_id {ref['video_id']!r} in {first} but "
                        f"{index[v][row]['video_id']!r} in {v} ({readers[v][s].path})"
                    )
            if any(index[v][row]["status"] != "ok" for v in views):
                continue
            length = min(rgb_length(index[v][row]["n_frames"], *maps[v]) for v in views)
            videos.append(
                Video(
                    video_id=ref["video_id"],
                    label=ref["label"],
                    label_index=int(ref["label_index"]),
                    group=ref["group"],
                    splits=json.loads(ref["splits"]),
                    shard=s,
                    shard_name=name,
                    row=row,
                    n_frames=int(length),
                )
            )
    return ShardTable(readers, videos, names[first], maps, rows)


def video_table(shards: dict[str, Sequence[str | Path]], views: Sequence[str] | None = None) -> list[Video]:
    """Every video whose status is ok in all `views` (default: all keys of `shards`), in shard/row order."""
    return open_views(shards, list(views or shards)).videos


# ------------------------------------------------------------------ groups, roles and the hold-out


def _group_key(video) -> str:
    return f"g:{video.group}" if video.group else f"v:{video.video_id}"


def group_id(video) -> int:
    """Stable int64 id of a video's group (a hash of the group name, so it does not depend on the rest
    of the dataset); a video with an empty group gets an id of its own (a hash of its video_id)."""
    digest = hashlib.blake2b(_group_key(video).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def holdout(videos: Sequence, fraction: float, seed: int = 0) -> tuple[list, list]:
    """Split training-role `videos` into (train, val), keeping the input order on each side.

    Group-aware: all videos of one non-empty group land on the same side; a video with an empty group is
    a group of its own. Groups are ranked by a hash of (seed, group) and taken into val until it holds
    at least round(fraction * len(videos)) videos; with fraction > 0 and >= 2 groups each side keeps at
    least one group (a single group stays in train). A group's side depends only on the seed and on the
    groups ranked before it."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    groups: dict[str, list[int]] = {}
    for i, v in enumerate(videos):
        groups.setdefault(_group_key(v), []).append(i)
    if fraction == 0 or not videos:
        return list(videos), []

    def rank(key: str) -> bytes:
        return hashlib.blake2b(f"{int(seed)}\0{key}".encode(), digest_size=16).digest()

    order = sorted(groups, key=rank)
    target = round(fraction * len(videos))
    chosen: list[str] = []
    count = 0
    for key in order:
        if count >= target:
            break
        chosen.append(key)
        count += len(groups[key])
    if not chosen and len(order) >= 2:
        chosen = [order[0]]
    if len(chosen) == len(order):  # never hold out every group (a single group stays in train)
        chosen.pop()
    held = {i for key in chosen for i in groups[key]}
    return [v for i, v in enumerate(videos) if i not in held], [v for i, v in enumerate(videos) if i in held]


LABELED_SEED_OFFSET = 1_000_003  # the labeled groups are ranked with seed + this, apart from the hold-out


@dataclass(frozen=True)
class Partition:
    """Which videos each dataset role gets: the roles of official split `split` (stored as a string), and
    the validation hold-out (`holdout`: `fraction` of the training role, ranked with `seed`). With
    `labeled` < 1 (fine-tuning with scarce labels, finetune.labeled_fraction) the training role is first
    cut to that fraction of its source groups (drawn with another key of the same seed), and the hold-out
    is drawn within it. Use the same partition for the train and val datasets."""

    split: str | int = "1"
    fraction: float = 0.1
    seed: int = 0
    labeled: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "split", str(self.split))
        if not 0 < self.labeled <= 1:
            raise ValueError(f"labeled must be in (0, 1], got {self.labeled}")

    def training_rows(self, rows: Sequence[VideoRecord]) -> list[VideoRecord]:
        """The training-role rows this partition uses: all of them, or the labeled groups' (`labeled`)."""
        train_role = [r for r in rows if r.role(self.split) == "train"]
        if self.labeled >= 1:
            return train_role
        return holdout(train_role, self.labeled, self.seed + LABELED_SEED_OFFSET)[1]

    def select(self, role: str, videos: Sequence[Video], rows: Sequence[VideoRecord]) -> list[Video]:
        """The `videos` of dataset role "train" (training role minus the hold-out), "val" (the hold-out)
        or "test" (test role), in input order. The hold-out is drawn over `rows`, every training-role row
        of the shards (failed ones included), so it does not depend on the views loaded nor on failures."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        pool = [v for v in videos if v.role(self.split) == ("test" if role == "test" else "train")]
        if role == "test":
            return pool
        train_role = self.training_rows(rows)
        used = {r.video_id for r in train_role}
        held = {r.video_id for r in holdout(train_role, self.fraction, self.seed)[1]}
        return [v for v in pool if v.video_id in used and (v.video_id in held) == (role == "val")]
