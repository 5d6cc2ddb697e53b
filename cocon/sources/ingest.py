"""Read the configured dataset's annotations into `VideoRecord`s (cocon/sources/records.py), and the
``cocon manifest`` command: ``cocon manifest --config config.yaml --out manifest.tsv [--missing missing.tsv]``.

One reader per format: UCF101 (ucf101.py), HMDB51 (hmdb51.py), Kinetics-400 (kinetics.py), the generic
CSV (csv_list.py), on the shared helpers of annotations.py; the demo is read like UCF101. Every problem in
the annotations is a `ManifestError` naming the file and 1-based line. The readers, `Missing` and
`ManifestError` are re-exported here.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import re
import sys

from cocon.sources.annotations import ON_MISSING, Missing
from cocon.sources.csv_list import read_csv_manifest
from cocon.sources.hmdb51 import read_hmdb51
from cocon.sources.kinetics import VIDEO_EXTENSIONS, read_kinetics400
from cocon.sources.records import ManifestError, VideoRecord
from cocon.sources.ucf101 import read_ucf101

__all__ = [
    "ON_MISSING",
    "VIDEO_EXTENSIONS",
    "ManifestError",
    "Missing",
    "VideoRecord",
    "annotation_files",
    "load_dataset",
    "main",
    "read_csv_manifest",
    "read_hmdb51",
    "read_kinetics400",
    "read_ucf101",
    "write_missing",
]


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
