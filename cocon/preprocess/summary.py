"""End-of-preprocessing report: every failed video per stage, from the shards' failure tables.

    cocon summary --manifest M.tsv --missing missing.tsv --json S.json --tsv F.tsv SHARD.h5 ...

Writes a JSON summary (counts per view, failures with reasons, provenance) and a TSV with one row
per (view, shard, video) failure; prints the same to stderr (the job log)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict

from cocon.data.shards import ShardReader
from cocon.files import write_text
from cocon.provenance import code_revision, dumps, library_versions
from cocon.sources.records import read_manifest


def summarize(shards: list[str], manifest: str, missing: str) -> dict:
    """{"videos": n, "missing_skipped": [...], "views": {view: {"shards", "ok", "failed", "failures"}}}."""
    views: dict = defaultdict(lambda: {"shards": 0, "ok": 0, "failed": 0, "failures": []})
    random_init: dict = defaultdict(list)
    for path in sorted(shards):
        r = ShardReader(path)
        v = views[r.attrs["view"]]
        v["shards"] += 1
        if r.attrs.get("weights") == "none":  # pose/seg computed by a randomly initialised model
            random_init[r.attrs["view"]].append(r.attrs["shard"])
        for row in r.index:
            if row["status"] == "ok":
                v["ok"] += 1
            else:
                v["failed"] += 1
                v["failures"].append({"shard": r.attrs["shard"], "video_id": row["video_id"], "reason": row["reason"]})
    with open(missing, newline="", encoding="utf-8") as fh:
        skipped = [row["video_id"] for row in csv.DictReader(fh, delimiter="\t")]
    return {
        "videos": len(read_manifest(manifest)),
        "missing_skipped": skipped,
        "views": dict(sorted(views.items())),
        "warnings": [
            f"{view}: weights none - computed by randomly initialised models ({len(names)} shards); "
            f"its maps carry no information about people (configure {view}.checkpoint)"
            for view, names in sorted(random_init.items())
        ],
        "code_revision": code_revision(),
        "library_versions": library_versions(),
    }


def format_summary(s: dict) -> str:
    """Human-readable lines: one count line per view, then each failure."""
    lines = [f"preprocessing summary: {s['videos']} videos in the manifest"]
    if s["missing_skipped"]:
        lines.append(
            f"  {len(s['missing_skipped'])} listed videos were missing on disk and skipped (manifest/missing.tsv)"
        )
    for view, v in s["views"].items():
        lines.append(f"  {view}: {v['ok']} ok, {v['failed']} failed ({v['shards']} shards)")
        for f in v["failures"]:
            lines.append(f"    FAILED {f['video_id']} (shard {f['shard']}): {f['reason']}")
    for w in s.get("warnings", []):
        lines.append(f"  WARNING {w}")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", required=True)
    p.add_argument("--missing", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--tsv", required=True)
    p.add_argument("shards", nargs="+")
    a = p.parse_args(argv)
    s = summarize(a.shards, a.manifest, a.missing)
    rows = ["view\tshard\tvideo_id\treason"] + [
        f"{view}\t{f['shard']}\t{f['video_id']}\t{f['reason']}" for view, v in s["views"].items() for f in v["failures"]
    ]
    write_text(a.tsv, "\n".join(rows) + "\n")
    write_text(a.json, json.dumps(json.loads(dumps(s)), indent=1) + "\n")
    print(format_summary(s), file=sys.stderr)


if __name__ == "__main__":
    main()
