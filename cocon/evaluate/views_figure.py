"""What preprocessing produced, to look at: one figure per chosen video with every computed view over time,
and the failed videos. Spec: docs/evaluation.md ("What preprocessing produced").

    cocon views-figure --output-dir results --views rgb flow_tvl1 flow_farneback pose seg \
        --failed results/reports/failed_videos.tsv --split 1 --out results/reports/views

Writes into --out:

    <role><n>_<video>.png   per chosen video (role train or test, n = 1, 2, ...): frames along time in
                            columns, one row per view (rgb; each flow method colour-coded with arrows;
                            pose heatmaps and person probability over the rgb frame), a key per row
    failed_videos.png       the failed videos with their reasons (from the summary's failed_videos.tsv)
    index.json              what was drawn: per figure the video, rgb frames, each view's stored
                            indices, maxima and empty flags (the report and the tests read it)

Videos: per role (train, test of `--split`), the first `--per-split` videos that are ok in rgb, in manifest
order (shards in order, rows in order), one per class while unseen classes remain. Frames: `--frames` rgb
frames evenly spaced over the video, on the frames every strided view (pose, seg) computed when there are
enough of them, so that a correctly aligned map lies exactly on its rgb frame. Each view's index comes from
the loader's own frame map (cocon.data.index.frame_map, cocon.data.sampling.view_frame_indices). Only those
frames are read.

Colour conventions: flow = Middlebury colour wheel (Baker et al. 2011): hue = direction (right = red,
down = yellow, left = cyan, up = blue/magenta), saturation = magnitude / `flow_max` px (default: the
shard's quantisation bound), darker beyond it; black arrows = block-mean flow. Pose: max over the
keypoint channels; seg: person probability; both in [0, 1], overlaid on the dimmed rgb frame. A map whose
maximum over the shown frame is below EMPTY_MAX (pose/seg, in [0, 1]) or EMPTY_FLOW_STEPS quantisation steps
(flow) is labelled EMPTY / NO MOTION in the cell; block arrows below that are left out.

Output is deterministic: same shards, same options -> same PNG bytes (Agg, fixed size and dpi, no
Software metadata).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cocon import views as V
from cocon.data.index import discover, frame_map
from cocon.data.sampling import view_frame_indices
from cocon.data.shards import ShardReader
from cocon.evaluate.colour import colour_wheel, flow_colour, overlay
from cocon.evaluate.figures import new_figure, save_png
from cocon.files import write_json
from cocon.preprocess.flow import dequantize
from cocon.runtime import setup_logging

log = logging.getLogger("cocon.evaluate.views_figure")

ROLES = ("train", "test")
EMPTY_MAX = 0.02  # pose/seg: a frame whose maximum confidence is below this is "EMPTY" (5/255 = 0.0196)
# flow: a frame whose largest |f| is below this many quantisation steps (2 * bound / 255 px each; 0.31 px at
# bound 20) is "NO MOTION" (a stored zero reads back as 0.08 px per component, one step off as 0.25 px)
EMPTY_FLOW_STEPS = 2
DPI = 100
CELL_IN = 1.6  # width of one frame cell (inches)
LABEL_IN = 1.45  # row-label column
KEY_IN = 1.6  # key column (colour wheel, colour bars)
TITLE_IN = 0.55
CAPTION_IN = 0.32  # per-row text under the cells
FONT = 7
ARROW_GRID = 6  # arrows per cell side (the longer side)
MAX_FAILED_ROWS = 30  # rows of the failed-videos figure (the TSV and tables.html hold them all)
OVERLAY_CMAP = {"pose": "inferno", "seg": "viridis"}
OVERLAY_WHAT = {"pose": "keypoint confidence\n(max of channels)", "seg": "P(person)"}


# ------------------------------------------------------------------ what to draw


@dataclass
class Choice:
    """One video to draw: its role in the split, shard (position and name) and row (same in every view)."""

    role: str
    number: int
    shard: int
    shard_name: str
    row: int
    video_id: str
    label: str

    @property
    def stem(self) -> str:
        return f"{self.role}{self.number}_{re.sub(r'[^A-Za-z0-9._-]+', '_', self.video_id)}"


def choose_videos(rgb_shards: list[Path], split: int | str, per_split: int) -> list[Choice]:
    """Per role (train, test): the first `per_split` videos ok in rgb in manifest order, taking one per
    class while classes not yet taken remain, then the next ones. Reads shard indices only, and stops
    as soon as every role has `per_split` videos of distinct classes."""
    found: dict[str, list[tuple]] = {r: [] for r in ROLES}  # candidates (shard, name, row, id, label)
    for s, path in enumerate(rgb_shards):
        reader = ShardReader(path)
        for row, meta in enumerate(reader.index):
            role = json.loads(meta["splits"]).get(str(split), "unused")
            if meta["status"] == "ok" and role in found:
                found[role].append((s, reader.attrs["shard"], row, meta["video_id"], meta["label"]))
        if all(len({c[4] for c in found[r]}) >= per_split for r in ROLES):
            break
    out = []
    for role in ROLES:
        first = {}
        for c in found[role]:
            first.setdefault(c[4], c)
        picked = list(first.values())[:per_split]
        picked += [c for c in found[role] if c not in picked][: per_split - len(picked)]
        picked.sort(key=lambda c: (c[0], c[2]))
        out += [Choice(role, k + 1, *c) for k, c in enumerate(picked)]
    return out


def choose_frames(n_rgb: int, maps: list[tuple[int, int]], count: int) -> np.ndarray:
    """`count` rgb frame indices (int64, ascending) evenly spaced over 0..n_rgb-1, taken among the frames
    that every strided view computed (map (stride, offset): rgb frame offset + j * stride) when there are
    at least `count` of them, else among all frames."""
    frames = np.arange(n_rgb)
    on_grid = frames.copy()
    for stride, offset in maps:
        on_grid = on_grid[(on_grid >= offset) & ((on_grid - offset) % stride == 0)]
    pool = on_grid if len(on_grid) >= min(count, n_rgb) else frames
    pick = np.unique(np.rint(np.linspace(0, len(pool) - 1, min(count, len(pool)))).astype(np.int64))
    return pool[pick]


@dataclass
class ViewData:
    """One view of one chosen video, read for the shown frames.

    frames: uint8 (F, h, w, C) stored frames at `stored` (F,) indices; held (F,): the rgb frame each holds
    (flow: the pair k -> k+1 starts there); status/reason from the shard index; attrs: shard root attributes."""

    view: str
    status: str
    reason: str = ""
    attrs: dict = field(default_factory=dict)
    stored: np.ndarray | None = None
    held: np.ndarray | None = None
    frames: np.ndarray | None = None
    n_frames: int = 0
    bound: float | None = None


def read_view(reader: ShardReader, view: str, row: int, rgb_frames: np.ndarray) -> ViewData:
    """The stored frames of `view` that the loader pairs with `rgb_frames` (rgb indices (F,)), through the
    view's frame map (only those frames are read). Flow: `bound` (px) from the video's attributes."""
    meta = reader.index[row]
    if meta["status"] != "ok":
        return ViewData(view, meta["status"], meta["reason"], reader.attrs)
    stride, offset = frame_map(reader.attrs)
    stored = view_frame_indices(rgb_frames, meta["n_frames"], stride, offset)
    data = ViewData(view, "ok", "", reader.attrs, stored, offset + stored * stride, reader.read(row, stored))
    data.n_frames = meta["n_frames"]
    if V.kind_of(view).name == "flow":
        bound = reader.video_attrs(row).get("bound")
        data.bound = float(bound if bound is not None else json.loads(reader.attrs["params"])["bound"])
    return data


# ------------------------------------------------------------------ drawing


def _pixels(figure, axes) -> list[int]:
    """[x0, y0, x1, y1] of an axes in the saved PNG's pixels (origin top left)."""
    b = axes.get_window_extent()
    height = figure.get_figheight() * DPI
    return [int(round(b.x0)), int(round(height - b.y1)), int(round(b.x1)), int(round(height - b.y0))]


def _blank(axes) -> None:
    axes.set_xticks([])
    axes.set_yticks([])


def _stamp(axes, text: str, y: float = 0.96, colour: str = "red") -> None:
    """A label at the top of a cell (EMPTY, NO MOTION) or, y = 0.5, across its middle (FAILED)."""
    axes.text(0.5, y, text, transform=axes.transAxes, ha="center", va="top" if y > 0.5 else "center",
              fontsize=FONT, color=colour, weight="bold",
              bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": colour, "pad": 1.5})  # fmt: skip


def _arrows(axes, u: np.ndarray, v: np.ndarray, gain: float, still: float) -> None:
    """Block-mean flow of u, v (h, w) px as black arrows from block centres, `gain` display px per flow px
    (image coords); blocks moving less than `still` px get none."""
    h, w = u.shape
    step = max(1, int(np.ceil(max(h, w) / ARROW_GRID)))
    ys, xs = np.arange(0, h - step + 1, step), np.arange(0, w - step + 1, step)
    if not len(ys) or not len(xs):
        return
    cu = np.array([[u[y : y + step, x : x + step].mean() for x in xs] for y in ys])
    cv = np.array([[v[y : y + step, x : x + step].mean() for x in xs] for y in ys])
    gx, gy = np.meshgrid(xs + (step - 1) / 2, ys + (step - 1) / 2)
    moving = np.hypot(cu, cv) >= still
    if not moving.any():
        return
    gx, gy, cu, cv = gx[moving], gy[moving], cu[moving], cv[moving]
    axes.quiver(gx, gy, cu * gain, cv * gain, angles="xy", scale_units="xy", scale=1, color="black",
                width=0.012, headwidth=4, headlength=4, headaxislength=3.5, minlength=0.3)  # fmt: skip


def _key_wheel(axes, max_px: float) -> None:
    """The colour wheel with its directions (image axes: +v points down) and the magnitude of its rim."""
    axes.imshow(colour_wheel(129), extent=(-1, 1, 1, -1), interpolation="bilinear")
    axes.set_xlim(-2.3, 2.3)
    axes.set_ylim(1.5, -1.7)
    axes.axis("off")
    for x, y, name, ha, va in ((1.08, 0, "right", "left", "center"), (-1.08, 0, "left", "right", "center"),
                               (0, 1.08, "down", "center", "top"), (0, -1.08, "up", "center", "bottom")):  # fmt: skip
        axes.text(x, y, name, ha=ha, va=va, fontsize=FONT - 1)
    axes.text(0, -1.7, f"rim: {max_px:g} px", ha="center", va="bottom", fontsize=FONT - 1)


def _key_bar(axes, cmap_name: str, what: str) -> None:
    """A colour bar 0..1 of an overlay, ticks on the left, what it shows on the right."""
    from matplotlib import colormaps

    grad = np.linspace(1, 0, 64)[:, None] * np.ones((1, 6))
    axes.imshow(grad, cmap=colormaps[cmap_name], extent=(0, 1, 0, 1), aspect="auto", vmin=0, vmax=1)
    axes.set_xticks([])
    axes.set_yticks([0, 0.5, 1])
    axes.tick_params(labelsize=FONT - 1, length=2)
    axes.yaxis.set_label_position("right")
    axes.set_ylabel(what, fontsize=FONT - 1)


def _row_label(view: str, data: ViewData, flow_max: float | None, gain: float | None) -> tuple[str, str]:
    """(label text, colour) of a view's row (flow: colour scale flow_max px, arrow length gain x |f|)."""
    kind = V.kind_of(view).name
    lines = [view]
    if kind == "rgb":
        lines.append("frame k")
    elif kind == "flow":
        lines += ["pair k → k+1", f"bound ±{data.bound:g} px" if data.bound is not None else ""]
        if flow_max is not None:
            lines.append(f"full colour at {flow_max:g} px")
        lines.append(f"arrows: block mean ×{gain:.1f}" if gain else "")
    else:
        if data.status == "ok":
            stride, offset = frame_map(data.attrs)
            lines.append(f"j ↦ rgb {offset}+{stride}·j" if stride != 1 or offset else "j ↦ rgb j")
        lines.append("over rgb frame k")
    random = data.attrs.get("weights") == "none"
    if random:
        lines.append("RANDOM WEIGHTS")
    return "\n".join(x for x in lines if x), ("red" if random else "black")


def render_video(
    choice: Choice,
    rgb_frames: np.ndarray,
    data: dict[str, ViewData],
    path: Path,
    split: int | str,
    flow_max: float | None = None,
) -> dict:
    """Draw one video (rows = data's views in order, rgb first; columns = rgb_frames (F,)) into `path`.
    flow_max: px of full flow colour (None: each flow view's bound). Returns what was drawn: per view
    status, reason, stored indices, rgb frames held, per-frame maxima ([0, 1] for pose/seg, px for flow)
    and empty flags, and each cell's pixel box [x0, y0, x1, y1] in the PNG."""
    rgb = data["rgb"]
    n_cols = len(rgb_frames)
    h, w = rgb.frames.shape[1:3]
    cell_h = CELL_IN * h / w
    row_h = cell_h + CAPTION_IN
    width = LABEL_IN + n_cols * CELL_IN + KEY_IN
    height = TITLE_IN + len(data) * row_h + 0.1
    fig = new_figure(width, height, DPI)
    meta = rgb.attrs
    title = (
        f"{choice.video_id}   label {choice.label}   {choice.role} (split {split})   "
        f"shard {choice.shard_name} row {choice.row}   {rgb.n_frames} frames {h}×{w}"
    )
    fig.text(0.5, 1 - 0.18 / height, title, ha="center", va="top", fontsize=FONT + 2, weight="bold")
    fig.text(0.5, 1 - 0.38 / height, f"dataset {json.loads(meta.get('dataset', '{}')).get('name', '?')}; columns: "
             "rgb frame k; each view at the index the training loader pairs with k", ha="center", va="top",
             fontsize=FONT)  # fmt: skip
    out = {"file": path.name, "video_id": choice.video_id, "label": choice.label, "role": choice.role,
           "shard": choice.shard_name, "row": choice.row, "rgb_frames": [int(k) for k in rgb_frames], "views": {}}  # fmt: skip
    for r, (view, d) in enumerate(data.items()):
        kind = V.kind_of(view).name
        top = TITLE_IN + r * row_h
        y0 = 1 - (top + cell_h) / height
        info: dict = {"status": d.status, "reason": d.reason, "cells": []}
        out["views"][view] = info
        if d.status != "ok":
            fig.text(0.08 / width, 1 - (top + cell_h / 2) / height, view, ha="left", va="center", fontsize=FONT)
            ax = fig.add_axes((LABEL_IN / width, y0, n_cols * CELL_IN / width, cell_h / height))
            ax.set_facecolor("0.85")
            _blank(ax)
            _stamp(ax, "\n".join(textwrap.wrap(f"FAILED: {d.reason}", 70)), y=0.5)
            info["cells"].append(_pixels(fig, ax))
            continue
        info.update(stored=[int(x) for x in d.stored], rgb_held=[int(x) for x in d.held], max=[], empty=[])
        if kind == "flow":
            info["bound"] = d.bound
            fmax = float(flow_max if flow_max is not None else d.bound)
            info["flow_max"] = fmax
            still = EMPTY_FLOW_STEPS * 2 * d.bound / 255  # px
            info["no_motion_px"] = still
            flows = dequantize(d.frames, d.bound)  # (F, h, w, 2) px
            mags = np.hypot(flows[..., 0], flows[..., 1])
            p95 = float(np.percentile(mags, 95)) if mags.size else 0.0
            gain = 0.9 * max(h, w) / ARROW_GRID / max(p95, 0.5)  # the 95th-percentile motion ~ 0.9 block
            info["arrow_gain"] = gain
        text, colour = _row_label(view, d, flow_max if flow_max is not None else d.bound, info.get("arrow_gain"))
        fig.text(0.08 / width, 1 - (top + cell_h / 2) / height, text, ha="left", va="center", fontsize=FONT,
                 color=colour)  # fmt: skip
        for c, k in enumerate(rgb_frames):
            ax = fig.add_axes(((LABEL_IN + c * CELL_IN) / width, y0, CELL_IN / width, cell_h / height))
            _blank(ax)
            frame = d.frames[c]
            caption = f"k={k}" if r == 0 else ""
            if kind == "rgb":
                ax.imshow(frame, interpolation="nearest")
                peak, empty = None, False
            elif kind == "flow":
                u, v = flows[c, ..., 0], flows[c, ..., 1]
                ax.imshow(flow_colour(u, v, fmax), interpolation="nearest")
                _arrows(ax, u, v, gain, still)
                ax.set_xlim(-0.5, frame.shape[1] - 0.5)
                ax.set_ylim(frame.shape[0] - 0.5, -0.5)
                peak = float(mags[c].max())
                empty = peak < still
                j = int(d.stored[c])
                pair = f"{j - 1}→{j} (repeat)" if j == d.n_frames - 1 and j > 0 else f"{j}→{j + 1}"
                caption = f"{pair}  max {peak:.2f} px"
                if empty:
                    _stamp(ax, f"NO MOTION (< {still:.2f} px)")
            else:
                scale = float(d.attrs.get("value_scale", 1 / 255))
                values = frame.astype(np.float32).max(axis=-1) * scale
                ax.imshow(overlay(rgb.frames[c], values, OVERLAY_CMAP.get(kind, "inferno")), interpolation="nearest")
                peak = float(values.max())
                empty = peak < EMPTY_MAX
                caption = f"j={d.stored[c]} = rgb {d.held[c]}  max {peak:.2f}"
                if empty:
                    _stamp(ax, f"EMPTY (max < {EMPTY_MAX:g})")
            if kind != "rgb" and int(d.held[c]) != int(k):
                caption += f"  (≠ k={k})"
                for side in ax.spines.values():
                    side.set_edgecolor("orange")
                    side.set_linewidth(2)
            ax.text(0.5, -0.04, caption, transform=ax.transAxes, ha="center", va="top", fontsize=FONT - 1,
                    color="black" if int(d.held[c]) == int(k) or kind == "rgb" else "darkorange")  # fmt: skip
            if peak is not None:
                info["max"].append(round(peak, 4))
                info["empty"].append(bool(empty))
            info["cells"].append(_pixels(fig, ax))
        left = LABEL_IN + n_cols * CELL_IN
        if kind == "flow":
            _key_wheel(fig.add_axes(((left + 0.05) / width, y0, (KEY_IN - 0.1) / width, cell_h / height)), fmax)
        elif kind != "rgb":
            bar = ((left + 0.4) / width, y0 + 0.1 * cell_h / height, 0.12 / width, 0.8 * cell_h / height)
            _key_bar(fig.add_axes(bar), OVERLAY_CMAP.get(kind, "inferno"), OVERLAY_WHAT.get(kind, "value"))
    save_png(fig, path, DPI)
    return out


def read_failures(tsv: Path | None) -> list[dict]:
    """Rows of the summary's failed_videos.tsv: [{view, shard, video_id, reason}, ...] (none if no file)."""
    if tsv is None or not Path(tsv).exists():
        return []
    with open(tsv, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def failures_by_video(rows: list[dict], views: list[str]) -> list[dict]:
    """One entry per failed video, in manifest order (shard, then first appearance): video_id, shard, the
    views it failed in (registry order) and the reason of the first of them (where it failed first)."""
    order = {v: i for i, v in enumerate(views)}
    by: dict[str, dict] = {}
    for row in rows:
        entry = by.setdefault(row["video_id"], {"video_id": row["video_id"], "shard": row["shard"], "views": []})
        entry["views"].append((order.get(row["view"], len(order)), row["view"], row["reason"]))
    out = []
    for e in sorted(by.values(), key=lambda e: (e["shard"], e["video_id"])):
        e["views"].sort()
        out.append({**e, "reason": e["views"][0][2], "views": [v for _, v, _ in e["views"]]})
    return out


def render_failures(failed: list[dict], path: Path, n_views: int, limit: int = MAX_FAILED_ROWS) -> None:
    """A table figure of failures_by_video's entries (at most `limit` rows, then a count of the rest) of a run
    with n_views views."""
    shown = failed[:limit]
    rows = max(1, len(shown)) + (1 if len(failed) > limit else 0)
    fig = new_figure(11.0, 0.7 + 0.2 * rows, DPI)
    title = f"Failed videos: {len(failed)}" if failed else "Failed videos: none (every video ok in every view)"
    fig.text(0.01, 1 - 0.12 / fig.get_figheight(), title, ha="left", va="top", fontsize=FONT + 3, weight="bold")
    ax = fig.add_axes((0.01, 0.02, 0.98, 1 - 0.45 / fig.get_figheight()))
    ax.axis("off")
    if shown:
        every = lambda f: f"all {len(f['views'])} views" if len(f["views"]) == n_views else ", ".join(f["views"])  # noqa: E731
        cells = [[f["video_id"], f["shard"], every(f), textwrap.shorten(f["reason"], 100)] for f in shown]
        if len(failed) > limit:
            cells.append([f"… and {len(failed) - limit} more (failed_videos.tsv)", "", "", ""])
        table = ax.table(cellText=cells, colLabels=["video", "shard", "failed in", "reason (where it failed first)"],
                         colWidths=[0.27, 0.06, 0.2, 0.47], bbox=(0, 0, 1, 1), cellLoc="left")  # fmt: skip
        table.auto_set_font_size(False)
        table.set_fontsize(FONT)
        for cell in table.get_celld().values():
            cell.PAD = 0.01
    save_png(fig, path, DPI)


def run(
    output_dir: Path,
    views: list[str],
    out: Path,
    split: int | str = 1,
    per_split: int = 2,
    frames: int = 6,
    failed_tsv: Path | None = None,
    flow_max: float | None = None,
) -> dict:
    """Every figure into `out` (module docstring); returns and writes out/index.json."""
    views = ["rgb", *[v for v in views if v != "rgb"]]
    shards = discover(output_dir, views)  # {view: [<output_dir>/shards/<view>/<shard>.h5, ...]}
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for choice in choose_videos(shards["rgb"], split, per_split):
        readers = {v: ShardReader(shards[v][choice.shard]) for v in views}
        # the frame maps of the strided views (pose, seg) decide which rgb frames are shown
        maps = [
            frame_map(r.attrs)
            for r in readers.values()
            if r.index[choice.row]["status"] == "ok" and frame_map(r.attrs) != (1, 0)
        ]
        rgb_frames = choose_frames(readers["rgb"].index[choice.row]["n_frames"], maps, frames)
        data = {v: read_view(r, v, choice.row, rgb_frames) for v, r in readers.items()}
        for r in readers.values():
            r.close()
        path = out / f"{choice.stem}.png"
        figures.append(render_video(choice, rgb_frames, data, path, split, flow_max))
        log.info("%s: %s (%s), rgb frames %s", path.name, choice.video_id, choice.role, rgb_frames.tolist())
    failed = failures_by_video(read_failures(failed_tsv), views)
    render_failures(failed, out / "failed_videos.png", len(views))
    index = {
        "split": str(split),
        "views": views,
        "figures": figures,
        "failed": {"file": "failed_videos.png", "videos": len(failed)},
        "empty_max": EMPTY_MAX,
        "empty_flow_steps": EMPTY_FLOW_STEPS,
    }
    write_json(out / "index.json", index)
    missing = {r for r in ROLES} - {f["role"] for f in figures}
    if missing:
        log.warning("no ok video of role %s in split %s", ", ".join(sorted(missing)), split)
    return index


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(description="Figures of what preprocessing produced for a few videos per split.")
    p.add_argument("--output-dir", required=True, type=Path, help="the run's output_dir (shards in <it>/shards/<view>)")
    p.add_argument("--views", nargs="+", required=True, help="views the run computed (rgb first)")
    p.add_argument("--out", required=True, type=Path, help="output folder (PNGs and index.json)")
    p.add_argument("--split", default="1", help="official split whose train/test roles are drawn (default 1)")
    p.add_argument("--per-split", type=int, default=2, help="videos per role, train and test (default 2)")
    p.add_argument("--frames", type=int, default=6, help="rgb frames per video, in columns (default 6)")
    p.add_argument("--failed", type=Path, default=None, help="the summary's failed_videos.tsv")
    p.add_argument(
        "--flow-max", type=float, default=None, help="px of full flow colour (default: each flow shard's bound)"
    )
    a = p.parse_args(argv)
    if a.per_split < 1 or a.frames < 1:
        p.error("--per-split and --frames must be >= 1")
    run(a.output_dir, a.views, a.out, a.split, a.per_split, a.frames, a.failed, a.flow_max)


if __name__ == "__main__":
    main()
