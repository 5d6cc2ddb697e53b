"""The manifest contract: one `VideoRecord` per input video, and its TSV form.

Every ingest format (UCF101, HMDB51, Kinetics-400, generic CSV, the demo) produces the same list of
records; sharding, the stages and the training loaders only ever see records. See docs/manifest.md.

Split roles are kept for *every* official split of a dataset (`splits`, e.g. ``{"1": "train",
"2": "test", "3": "train"}`` for a UCF101 video), so that the preprocessed shards do not depend on
which split a run trains on: switching `dataset.split` never re-extracts frames or flow.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("train", "test", "unused")

MANIFEST_COLUMNS = (
    "video_id",
    "path",
    "label",
    "label_index",
    "group",
    "splits",
    "shard",
)


class ManifestError(ValueError):
    """A problem in a dataset's annotation files, located by file and (1-based) line.

    `line` is None for problems that concern a whole file (missing, empty)."""

    def __init__(self, file: str | Path, line: int | None, message: str):
        self.file = str(file)
        self.line = line
        self.message = message
        where = self.file if line is None else f"{self.file}:{line}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class VideoRecord:
    """One video of a dataset.

    video_id     unique, stable id, e.g. ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01`` (no extension)
    path         path of the encoded video file: absolute, or relative to the working directory
                 when configured so (the demo under a relative output_dir)
    label        class name as in the dataset's annotation
    label_index  0-based class index (order of classInd / sorted class names)
    group        source group: videos with the same non-empty group come from the same source
                 (UCF101 ``<class>_gXX``, Kinetics YouTube id); ``""`` when unknown
    splits       role of the video in each official split: {split name: "train"|"test"|"unused"}
    """

    video_id: str
    path: str
    label: str
    label_index: int
    group: str = ""
    splits: dict[str, str] = field(default_factory=dict, hash=False, compare=True)

    def role(self, split: str | int) -> str:
        """Role ("train", "test" or "unused") of this video in split `split`."""
        return self.splits.get(str(split), "unused")


def splits_to_json(splits: dict[str, str]) -> str:
    """Canonical (sorted, compact) JSON of a splits mapping, as stored in manifests and shards."""
    return json.dumps(dict(sorted(splits.items())), separators=(",", ":"))


def assign_shards(records: list[VideoRecord], videos_per_shard: int) -> list[list[VideoRecord]]:
    """Deterministic shard membership: sort by video_id, cut into chunks of `videos_per_shard`.

    Depends only on the set of video ids and the shard size (not on file order, labels or splits),
    so it is the same on every machine and for every `dataset.split`."""
    if videos_per_shard < 1:
        raise ValueError("videos_per_shard must be >= 1")
    ordered = sorted(records, key=lambda r: r.video_id)
    return [ordered[i : i + videos_per_shard] for i in range(0, len(ordered), videos_per_shard)]


def shard_name(index: int) -> str:
    """File stem of shard `index` (0-based): ``00000``, ``00001``, ..."""
    return f"{index:05d}"


def write_manifest(path: str | Path, shards: list[list[VideoRecord]]) -> None:
    """Write the sharded manifest as a tab-separated file with a header (MANIFEST_COLUMNS)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(MANIFEST_COLUMNS)
        for k, shard in enumerate(shards):
            for r in shard:
                w.writerow(
                    [r.video_id, r.path, r.label, r.label_index, r.group, splits_to_json(r.splits), shard_name(k)]
                )


def read_manifest(path: str | Path, shard: str | None = None) -> list[VideoRecord]:
    """Read a manifest written by `write_manifest`, optionally only the rows of one shard, in order."""
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = csv.reader(fh, delimiter="\t")
        header = next(rows, None)
        if header is None or tuple(header) != MANIFEST_COLUMNS:
            raise ManifestError(path, 1, f"not a cocon manifest (expected columns {', '.join(MANIFEST_COLUMNS)})")
        for n, row in enumerate(rows, start=2):
            if len(row) != len(MANIFEST_COLUMNS):
                raise ManifestError(path, n, f"expected {len(MANIFEST_COLUMNS)} columns, found {len(row)}")
            if shard is not None and row[6] != shard:
                continue
            out.append(
                VideoRecord(
                    video_id=row[0],
                    path=row[1],
                    label=row[2],
                    label_index=int(row[3]),
                    group=row[4],
                    splits=json.loads(row[5]),
                )
            )
    return out
