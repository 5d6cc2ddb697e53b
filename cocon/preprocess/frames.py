"""Frames stage: decode the videos of one shard, resize, and write the `rgb` view shard.

    cocon frames --manifest M.tsv --shard 00003 --out rgb/00003.h5 \
        --config-json '{"dataset":{"name":"demo","format":"demo"},"frames":{"short_side":128,...}}'

Output frames: uint8 (T, H, W, 3) RGB, min(H, W) = short_side, every decoded frame (no fps change).
"""

from __future__ import annotations

from cocon.data.shards import ShardWriter, encode_frames
from cocon.preprocess import stage
from cocon.preprocess.video import BadVideo, decode_video
from cocon.sources.records import read_manifest

VIEW = "rgb"


def decode_and_encode(rec, params: dict):
    """One video -> (EncodedFrames, meta). Raises BadVideo with the reason."""
    v = decode_video(
        rec.path, params["short_side"], params["interpolation"], params["max_frames"], params["min_frames"]
    )
    meta = {"fps": v.fps, "orig_height": v.orig_height, "orig_width": v.orig_width, "orig_frames": v.orig_frames}
    return encode_frames(v.frames, params["encoding"]), meta


def run(manifest: str, shard: str, out: str, params: dict, dataset: dict, threads: int = 1) -> list[tuple[str, str]]:
    """Write the rgb shard `out` for the manifest rows of `shard`; returns the failures (id, reason)."""
    records = read_manifest(manifest, shard=shard)
    if not records:
        raise SystemExit(f"{manifest}: no videos in shard {shard}")
    failures = []
    attrs = stage.root_attrs("frames", params, dataset)
    with (
        ShardWriter(out, VIEW, shard, attrs, params["encoding"]) as writer,
        stage.progress(len(records), f"frames {shard}") as bar,
    ):
        for rec, result in stage.ordered_map(lambda r: decode_and_encode(r, params), records, threads):
            if isinstance(result, BadVideo):
                writer.add_failure(rec, str(result))
                failures.append((rec.video_id, str(result)))
            else:
                writer.add_video(rec, *result)
            bar.update()
    stage.report("frames", shard, len(records) - len(failures), failures)
    return failures


def main(argv=None) -> None:
    p = stage.stage_parser("Decode and resize the videos of one shard into an rgb HDF5 shard.")
    p.add_argument("--manifest", required=True, help="sharded manifest TSV (cocon.sources.ingest)")
    a, params, dataset = stage.stage_args(p, argv, "frames")
    stage.setup(a.threads)
    run(a.manifest, a.shard, a.out, params, dataset, a.threads)


if __name__ == "__main__":
    main()
