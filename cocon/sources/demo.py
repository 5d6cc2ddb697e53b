"""The embedded demo dataset: stick figures whose class is their motion, written in the UCF101 layout.

Each video shows one articulated figure (head, torso, upper/lower arms, upper/lower legs) in 3-D,
seen from a per-group yaw angle and drawn with OpenCV on a textured background. The class fixes
how the joint angles move over time; everything visible in a single frame (background, colours,
size, line thickness, position, view, handedness) is drawn per group from a generator seeded by
(seed, group number) only, so appearance carries no class information. See docs/demo.md.

Layout (like UCF101, split 1 only)::

    <output_dir>/demo/videos/<Class>/v_<Class>_gXX_cYY.avi
    <output_dir>/demo/annotations/{classInd,trainlist01,testlist01}.txt
"""

from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np

from cocon.config import ConfigError, add_config_args, config_from_args
from cocon.files import atomic_path, write_text
from cocon.sources.records import VideoRecord

CLASSES: tuple[str, ...] = ("Wave", "JumpingJack", "Squat", "WalkInPlace", "Punch", "Clap", "Kick", "Bow")

# Base period of each class's movement cycle, seconds (each clip scales it by 0.8..1.2).
PERIODS_S = {
    "Wave": 0.56,
    "JumpingJack": 0.88,
    "Squat": 1.36,
    "WalkInPlace": 1.04,
    "Punch": 0.80,
    "Clap": 0.44,
    "Kick": 1.20,
    "Bow": 1.52,
}

# Skeleton, in units of the standing figure's height (feet at 0, top of the head at ~1).
L_THIGH, L_SHIN, L_TORSO, L_NECK, R_HEAD = 0.25, 0.25, 0.30, 0.10, 0.075
L_UPPER_ARM, L_FOREARM = 0.16, 0.15
HALF_SHOULDERS, HALF_HIPS = 0.08, 0.05

# Rest pose: (abduction, forward flexion) in degrees per segment, see `_direction`.
_REST = {
    "arm_l": (8, 0),
    "fore_l": (5, 12),
    "arm_r": (8, 0),
    "fore_r": (5, 12),
    "thigh_l": (4, 0),
    "shin_l": (3, 0),
    "thigh_r": (4, 0),
    "shin_r": (3, 0),
}

GROUP_STRIDE = 100  # global group number = label_index * GROUP_STRIDE + group (1..99)


# ---------------------------------------------------------------------------- the plan


def video_root(cfg: dict) -> str:
    """<output_dir>/demo/videos, as configured: relative to the working directory when output_dir is
    relative, so that the manifest and shards are the same bytes wherever the workflow runs."""
    return os.path.join(cfg["output_dir"], "demo", "videos")


def annotation_dir(cfg: dict) -> str:
    """<output_dir>/demo/annotations, relative or absolute as output_dir is."""
    return os.path.join(cfg["output_dir"], "demo", "annotations")


def _clips(cfg: dict) -> list[tuple[VideoRecord, int, int]]:
    """(record, global group number, clip number) of every demo video, sorted by video_id."""
    d = cfg["demo"]
    n_groups, n_clips, n_test = d["groups_per_class"], d["clips_per_group"], d["test_groups"]
    for key in ("groups_per_class", "clips_per_group"):
        if d[key] > 99:
            raise ConfigError(f"demo.{key}", "at most 99 (UCF101 ids have two digits)")
    for key in ("width", "height"):
        if d[key] % 2:
            raise ConfigError(f"demo.{key}", "must be even (XVID stores 4:2:0 video; odd sizes decode cropped)")
    root = video_root(cfg)
    out = []
    for ci, name in enumerate(CLASSES[: d["classes"]]):
        for g in range(1, n_groups + 1):
            role = "test" if g > n_groups - n_test else "train"
            for c in range(1, n_clips + 1):
                vid = f"{name}/v_{name}_g{g:02d}_c{c:02d}"
                rec = VideoRecord(
                    video_id=vid,
                    path=os.path.join(root, vid + ".avi"),
                    label=name,
                    label_index=ci,
                    group=f"{name}_g{g:02d}",
                    splits={"1": role},
                )
                out.append((rec, ci * GROUP_STRIDE + g, c))
    return sorted(out, key=lambda t: t[0].video_id)


def plan(cfg: dict) -> list[VideoRecord]:
    """The demo's videos, sorted by video_id, computed without touching the disk.

    `cfg` is the full validated config; paths are under video_root(cfg), relative if output_dir is."""
    return [rec for rec, _, _ in _clips(cfg)]


# ---------------------------------------------------------------------------- motion


def _class_pose(label: str, p: np.ndarray, a: float) -> dict:
    """Class-specific joint angles (degrees) at phases `p` (T,) radians, amplitude factor `a`.

    Returns overrides of `_REST` ((abduction, flexion) pairs of (T,) arrays or scalars) plus
    optional "bend" (torso forward bend, degrees) and "hop" (vertical lift, figure heights)."""
    u = (1 - np.cos(p)) / 2  # 0 -> 1 -> 0 once per cycle, starting from the rest pose
    s = np.sin(p)
    if label == "Wave":  # right upper arm raised, forearm swings side to side above the head
        return {"arm_r": (125 + 8 * a * s, 10), "fore_r": (160 + 35 * a * s, 10)}
    if label == "JumpingJack":  # arms and legs spread and close, body hops at each transition
        arm, fore, leg = (10 + 150 * a * u, 0), (10 + 160 * a * u, 0), (4 + 18 * a * u, 0)
        return {
            "arm_l": arm,
            "arm_r": arm,
            "fore_l": fore,
            "fore_r": fore,
            "thigh_l": leg,
            "thigh_r": leg,
            "shin_l": leg,
            "shin_r": leg,
            "hop": 0.05 * a * np.abs(s),
        }
    if label == "Squat":  # knees bend and the body lowers, arms go forward for balance
        thigh, shin = (4, 85 * a * u), (3, -35 * a * u)
        return {
            "thigh_l": thigh,
            "thigh_r": thigh,
            "shin_l": shin,
            "shin_r": shin,
            "arm_l": (8, 80 * a * u),
            "arm_r": (8, 80 * a * u),
            "fore_l": (5, 12 + 75 * a * u),
            "fore_r": (5, 12 + 75 * a * u),
            "bend": 30 * a * u,
        }
    if label == "WalkInPlace":  # knees lift alternately, arms swing opposite to the legs
        lift_l, lift_r = 50 * a * np.maximum(s, 0), 50 * a * np.maximum(-s, 0)
        swing = 30 * a * s
        return {
            "thigh_l": (4, lift_l),
            "shin_l": (3, -0.6 * lift_l),
            "thigh_r": (4, lift_r),
            "shin_r": (3, -0.6 * lift_r),
            "arm_l": (8, -swing),
            "fore_l": (5, 25 - swing),
            "arm_r": (8, swing),
            "fore_r": (5, 25 + swing),
        }
    if label == "Punch":  # guard pose, forearms extend forward alternately
        out = {}
        for side, e in (("l", np.maximum(s, 0)), ("r", np.maximum(-s, 0))):
            out[f"arm_{side}"] = (15 - 10 * a * e, 30 + 60 * a * e)
            out[f"fore_{side}"] = (5, 140 - 50 * a * e)
        return out
    if label == "Clap":  # arms held forward, forearms open and meet in front of the chest
        return {
            "arm_l": (5 + 50 * a * (1 - u), 70),
            "arm_r": (5 + 50 * a * (1 - u), 70),
            "fore_l": (-30 * u + 50 * a * (1 - u), 80),
            "fore_r": (-30 * u + 50 * a * (1 - u), 80),
        }
    if label == "Kick":  # right leg swings forward and up, arms open for balance, torso leans back
        k = u**2
        return {
            "thigh_r": (4, 85 * a * k),
            "shin_r": (3, 75 * a * k),
            "arm_l": (10 + 35 * a * k, 0),
            "arm_r": (10 + 35 * a * k, 0),
            "bend": -12 * a * k,
        }
    if label == "Bow":  # torso bends forward from the hips, arms hang, hips go back
        return {
            "bend": 70 * a * u,
            "arm_l": (8, 25 * a * u),
            "arm_r": (8, 25 * a * u),
            "fore_l": (5, 12 + 30 * a * u),
            "fore_r": (5, 12 + 30 * a * u),
            "thigh_l": (4, 10 * a * u),
            "thigh_r": (4, 10 * a * u),
        }
    raise ValueError(f"unknown demo class {label!r} (known: {', '.join(CLASSES)})")


def _direction(angles: tuple, side: float, n: int) -> np.ndarray:
    """(n, 3) unit vectors (x = figure's left, y = up, z = forward) of a limb hanging down, raised
    sideways by `abduction` degrees (outwards for side +1 = left, -1 = right) and forwards by `flexion`."""
    ab, fl = (np.deg2rad(np.broadcast_to(np.asarray(v, float), (n,))) for v in angles)
    return np.stack([side * np.sin(ab), -np.cos(ab) * np.cos(fl), np.cos(ab) * np.sin(fl)], axis=1)


def _skeleton(pose: dict, n: int) -> dict[str, np.ndarray]:
    """Joint positions, each (n, 3) in figure heights, body frame, with the lowest foot on the ground."""
    d = {k: _direction(pose.get(k, v), 1.0 if k.endswith("_l") else -1.0, n) for k, v in _REST.items()}
    # Leg vectors from the hip; the leg that reaches lowest is planted at y = 0, z = 0.
    leg = {s: L_THIGH * d[f"thigh_{s}"] + L_SHIN * d[f"shin_{s}"] for s in "lr"}
    planted_l = leg["l"][:, 1] <= leg["r"][:, 1]
    foot = np.where(planted_l[:, None], leg["l"], leg["r"])
    hop = np.broadcast_to(np.asarray(pose.get("hop", 0.0), float), (n,))
    pelvis = np.stack([np.zeros(n), -foot[:, 1] + hop, -foot[:, 2]], axis=1)
    bend = np.deg2rad(np.broadcast_to(np.asarray(pose.get("bend", 0.0), float), (n,)))
    up = np.stack([np.zeros(n), np.cos(bend), np.sin(bend)], axis=1)
    neck = pelvis + L_TORSO * up
    j = {"pelvis": pelvis, "neck": neck, "head": neck + (L_NECK + R_HEAD) * up}
    for s, sign in (("l", 1.0), ("r", -1.0)):
        lateral = np.array([sign, 0.0, 0.0])
        j[f"shoulder_{s}"] = neck - 0.02 * up + HALF_SHOULDERS * lateral
        j[f"elbow_{s}"] = j[f"shoulder_{s}"] + L_UPPER_ARM * d[f"arm_{s}"]
        j[f"wrist_{s}"] = j[f"elbow_{s}"] + L_FOREARM * d[f"fore_{s}"]
        j[f"hip_{s}"] = pelvis + HALF_HIPS * lateral
        j[f"knee_{s}"] = j[f"hip_{s}"] + L_THIGH * d[f"thigh_{s}"]
        j[f"ankle_{s}"] = j[f"knee_{s}"] + L_SHIN * d[f"shin_{s}"]
    return j


# (from joint, to joint, colour: 0 shirt, 1 trousers, 2 skin)
_SEGMENTS = (
    ("pelvis", "neck", 0),
    ("shoulder_l", "shoulder_r", 0),
    ("neck", "head", 2),
    ("hip_l", "hip_r", 1),
    ("shoulder_l", "elbow_l", 0),
    ("elbow_l", "wrist_l", 2),
    ("shoulder_r", "elbow_r", 0),
    ("elbow_r", "wrist_r", 2),
    ("hip_l", "knee_l", 1),
    ("knee_l", "ankle_l", 1),
    ("hip_r", "knee_r", 1),
    ("knee_r", "ankle_r", 1),
)


# ---------------------------------------------------------------------------- appearance


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _colour(rng: np.random.Generator, light: bool) -> np.ndarray:
    """A random RGB colour (3,) float with luma >= 165 (light) or <= 85 (dark)."""
    while True:
        c = rng.uniform(0, 255, 3)
        if (_luma(c) >= 165) if light else (_luma(c) <= 85):
            return c


def _texture(rng: np.random.Generator, h: int, w: int, dark: bool, contrast: float = 1.0) -> np.ndarray:
    """(h, w, 3) uint8 RGB background: a random mix of stripes, checker and smooth blobs mapped
    through a random 2-3 colour palette (channels 10..110 if `dark`, else 140..245); `contrast` scales
    the pattern around its mean colour (1 = as drawn, 0 = a flat colour)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    field = np.zeros((h, w))
    kinds = rng.permutation(3)[: rng.integers(1, 4)]
    for kind in kinds:
        theta, weight = rng.uniform(0, np.pi), rng.uniform(0.3, 1.0)
        along = xx * np.cos(theta) + yy * np.sin(theta)
        if kind == 0:  # stripes, period 5..24 px
            comp = 0.5 + 0.5 * np.sin(2 * np.pi * along / rng.uniform(5, 24) + rng.uniform(0, 2 * np.pi))
        elif kind == 1:  # checker, cells 4..14 px, rotated
            cell = rng.uniform(4, 14)
            across = -xx * np.sin(theta) + yy * np.cos(theta)
            comp = (np.floor(along / cell) + np.floor(across / cell)) % 2
        else:  # smooth noise blobs
            step = rng.uniform(6, 16)
            coarse = rng.random((int(h / step) + 2, int(w / step) + 2))
            comp = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        field += weight * comp
    field = (field - field.min()) / max(field.max() - field.min(), 1e-9)
    lo, hi = (10, 110) if dark else (140, 245)
    palette = rng.uniform(lo, hi, (int(rng.integers(2, 4)), 3))
    knots = np.linspace(0, 1, len(palette))
    img = np.stack([np.interp(field, knots, palette[:, ch]) for ch in range(3)], axis=-1)
    if contrast != 1.0:
        mean = img.mean(axis=(0, 1))
        img = mean + contrast * (img - mean)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# Appearance ranges (docs/demo.md, "What varies"): figure height as a fraction of min(width, height), line
# width as a fraction of the figure height, and the contrast of the background pattern.
STYLE = {"figure_size": (0.55, 0.75), "line_width": (0.035, 0.075), "background_contrast": 1.0}


def _appearance(seed: int, group: int, width: int, height: int, style: dict | None = None) -> dict:
    """Per-group appearance, drawn identically for every class (seeded by (seed, group) only)."""
    st = {**STYLE, **(style or {})}
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0, group]))
    dark = bool(rng.random() < 0.5)
    pad = max(4, min(width, height) // 8)
    size = min(width, height) * rng.uniform(*st["figure_size"])  # standing figure height, px
    return {
        "pad": pad,
        "background": _texture(rng, height + 2 * pad, width + 2 * pad, dark, st["background_contrast"]),
        "colours": np.stack([_colour(rng, light=dark) for _ in range(3)]),  # shirt, trousers, skin
        "size": size,
        "thickness": max(1, int(round(size * rng.uniform(*st["line_width"])))),
        "cx": width * rng.uniform(0.3, 0.7),  # figure centre, px
        "ground": height * rng.uniform(0.86, 0.97),  # feet, px
        "yaw": np.deg2rad(rng.uniform(20, 60)) * rng.choice([-1.0, 1.0]),  # view angle
        "mirror": rng.choice([-1.0, 1.0]),  # handedness (which arm waves, which leg kicks)
    }


# ---------------------------------------------------------------------------- rendering


def render_clip(
    label: str,
    group: int,
    clip: int,
    seed: int = 0,
    frames: int = 48,
    width: int = 96,
    height: int = 72,
    fps: float = 25.0,
    style: dict | None = None,
) -> np.ndarray:
    """Frames (frames, height, width, 3) uint8 RGB of one clip.

    label  class name (one of CLASSES): the only input that decides the motion
    group  global group number: seeds the appearance (background, colours, size, thickness,
           position, view) shared by all clips of the group; generate() uses
           label_index * 100 + g for group g of a class
    clip   clip number in the group: seeds the per-clip jitter (position, colour, background
           crop) and the motion nuisance (phase, tempo +-20 %, amplitude 0.8..1.15, drift)
    """
    if label not in PERIODS_S:
        raise ValueError(f"unknown demo class {label!r} (known: {', '.join(CLASSES)})")
    look = _appearance(seed, group, width, height, style)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, group, clip]))
    period = PERIODS_S[label] * fps * rng.uniform(0.8, 1.2)  # frames
    t = np.arange(frames, dtype=np.float64)
    phase = 2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)
    amplitude = rng.uniform(0.8, 1.15)
    drift = rng.uniform(-0.12, 0.12) * width if rng.random() < 0.5 else 0.0  # px over the clip
    cx = look["cx"] + rng.uniform(-0.04, 0.04) * width + drift * (t / max(frames - 1, 1) - 0.5)
    ground = look["ground"] + rng.uniform(-0.03, 0.03) * height
    colours = np.clip(look["colours"] + rng.uniform(-12, 12, (3, 3)), 0, 255)
    ox, oy = rng.integers(0, 2 * look["pad"] + 1, 2)
    background = np.ascontiguousarray(look["background"][oy : oy + height, ox : ox + width])

    joints = _skeleton(_class_pose(label, phase, amplitude), frames)
    cos_y, sin_y = np.cos(look["yaw"]), np.sin(look["yaw"])
    px, depth = {}, {}
    for name, xyz in joints.items():
        x, y, z = look["mirror"] * xyz[:, 0], xyz[:, 1], xyz[:, 2]
        u = cx + look["size"] * (x * cos_y + z * sin_y)
        v = ground - look["size"] * y
        px[name] = np.rint(np.stack([u, v], axis=1) * 16).astype(np.int64)  # 4 fractional bits
        depth[name] = -x * sin_y + z * cos_y  # towards the camera

    shade = [tuple(float(c) for c in col) for col in colours]
    thick = look["thickness"]
    radius = int(round(R_HEAD * look["size"] * 16))
    out = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        img = background.copy()
        items = [(depth[a][f] + depth[b][f], k) for k, (a, b, _) in enumerate(_SEGMENTS)]
        items.append((2 * depth["head"][f], -1))
        for _, k in sorted(items):  # far to near
            if k < 0:
                cv2.circle(img, tuple(px["head"][f]), radius, shade[2], -1, cv2.LINE_AA, 4)
            else:
                a, b, col = _SEGMENTS[k]
                cv2.line(img, tuple(px[a][f]), tuple(px[b][f]), shade[col], thick, cv2.LINE_AA, 4)
        out[f] = img
    return out


# ---------------------------------------------------------------------------- writing


def _write_video(path: str, frames: np.ndarray, fps: float) -> None:
    """Encode (T, H, W, 3) RGB frames as XVID .avi at `path`, atomically (OpenCV picks the container
    from the suffix, so the temporary file is <stem>.partial.avi)."""
    height, width = frames.shape[1:3]
    with atomic_path(path, keep_suffix=True) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"XVID"), float(fps), (width, height))
        if not writer.isOpened():
            raise RuntimeError(f"cv2.VideoWriter cannot write XVID to {tmp}")
        try:
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()


def _write_text(path: str, lines: list[str]) -> None:
    write_text(path, "".join(line + "\n" for line in lines))


def generate(cfg: dict) -> None:
    """Write every video of `plan(cfg)` and the UCF101 split-1 annotation files.

    annotations/classInd.txt ("1 Wave"), trainlist01.txt ("Wave/v_Wave_g01_c01.avi 1"),
    testlist01.txt ("Wave/v_Wave_g04_c01.avi"), in class order, then by video id."""
    d = cfg["demo"]
    clips = _clips(cfg)
    for rec, group, clip in clips:
        frames = render_clip(
            rec.label,
            group,
            clip,
            cfg["seed"],
            d["frames"],
            d["width"],
            d["height"],
            d["fps"],
            style={k: d[k] for k in STYLE},
        )
        _write_video(rec.path, frames, d["fps"])
    ann = annotation_dir(cfg)
    os.makedirs(ann, exist_ok=True)
    records = sorted((r for r, _, _ in clips), key=lambda r: (r.label_index, r.video_id))
    _write_text(os.path.join(ann, "classInd.txt"), [f"{i + 1} {c}" for i, c in enumerate(CLASSES[: d["classes"]])])
    _write_text(
        os.path.join(ann, "trainlist01.txt"),
        [f"{r.video_id}.avi {r.label_index + 1}" for r in records if r.role(1) == "train"],
    )
    _write_text(os.path.join(ann, "testlist01.txt"), [f"{r.video_id}.avi" for r in records if r.role(1) == "test"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cocon demo", description="Generate the demo dataset.")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    start = time.perf_counter()
    generate(cfg)
    d = cfg["demo"]
    print(
        f"demo: {len(plan(cfg))} videos ({d['classes']} classes x {d['groups_per_class']} groups x "
        f"{d['clips_per_group']} clips, {d['frames']} frames {d['width']}x{d['height']} @ {d['fps']} fps) "
        f"in {video_root(cfg)}, annotations in {annotation_dir(cfg)}, {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
