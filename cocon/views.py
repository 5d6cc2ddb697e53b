"""The views registry: one declaration per kind of view, read by everything that enumerates views.

A *view* is one way of seeing a video, stored as its own HDF5 shards and encoded by its own network:
``rgb``, ``flow_tvl1``, ``flow_farneback``, ``pose``, ``seg``. A *kind* groups views that are handled
the same way (``flow_tvl1`` and ``flow_farneback`` are both of kind ``flow``). A :class:`ViewKind`
holds what the code needs to know about a kind: channels, input normalisation, what a horizontal flip
does to the channels, the default input size, its training crop, whether the job producing it uses a
GPU. The loader, the config checks, training, fine-tuning, features and the rules
(wildcards, view lists, GPU requests) all read it; ``docs/adding_a_view.md`` shows how to add one.

Stored frames are uint8 (T, H, W, C); a network input is float32 ``uint8 * scale + offset`` per
channel (:meth:`ViewKind.normaliser`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# COCO keypoint order (mmpose): nose, left/right eye, ear, shoulder, elbow, wrist, hip, knee, ankle.
COCO_KEYPOINTS = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)


def mirror_pairs(names) -> tuple[int, ...]:
    """Channel permutation of a horizontal flip for named keypoints: left_x <-> right_x, others stay."""
    index = {n: i for i, n in enumerate(names)}
    swap = {"left_": "right_", "right_": "left_"}
    out = []
    for n in names:
        for a, b in swap.items():
            if n.startswith(a) and n.replace(a, b, 1) in index:
                out.append(index[n.replace(a, b, 1)])
                break
        else:
            out.append(index[n])
    return tuple(out)


@dataclass(frozen=True)
class IntensityCrop:
    """The original's training crop of flow, pose and seg (CoCon's RandomIntensityCropForFlow and
    RandomIntensityCropForTensors): `candidates` squares of `side` x the short side at random places, the
    same for every frame of the clip; the one whose frames are most intense is kept. measure: "deviation"
    (mean |q - 127.5| of the uint8 values: flow's magnitude) or "value" (mean q: heatmaps, probabilities)."""

    side: float
    measure: str
    candidates: int = 3

    def __post_init__(self):
        if self.measure not in ("deviation", "value") or not 0 < self.side <= 1 or self.candidates < 1:
            raise ValueError(f"bad IntensityCrop {self}")

    def frame_intensity(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (T, h, w, C) crops -> float64 (T,): the intensity of each frame (see the class docstring)."""
        x = frames.astype(np.float32)
        x = np.abs(x - 127.5) if self.measure == "deviation" else x
        return x.mean(axis=(1, 2, 3), dtype=np.float64)


@dataclass(frozen=True)
class Flip:
    """What a horizontal flip does to a view's channels, besides mirroring the image.

    negate: channels whose uint8 value q encodes a signed horizontal quantity centred at 127.5 (flow u):
            q -> 255 - q, which negates the dequantised value exactly.
    permute: a channel permutation (keypoint heatmaps: left and right swap), or () for none."""

    negate: tuple[int, ...] = ()
    permute: tuple[int, ...] = ()

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (..., H, W, C) -> the horizontally flipped frames (a new array)."""
        out = frames[..., ::-1, :]
        if self.permute:
            out = out[..., list(self.permute)]
        out = np.ascontiguousarray(out)
        for c in self.negate:
            np.subtract(255, out[..., c], out=out[..., c])
        return out


@dataclass(frozen=True)
class ViewKind:
    """One kind of view (see the module docstring).

    name:            kind name; its views are ``name`` or ``name_<variant>`` (flow_tvl1)
    channels:        C of the stored frames and of the network input
    default_size:    training input side in px (the original: 128 rgb/flow, 64 pose/seg)
    mean, std:       input normalisation of ``uint8 / 255`` per channel (len 1 = every channel)
    flip:            the channel rule of a horizontal flip (:class:`Flip`)
    flip_in_training: whether training augmentation flips this view (the original never flips flow)
    colour_jitter:   whether colour augmentation (grey, jitter) applies (rgb only)
    intensity_crop:  the training crop of the original for this kind (:class:`IntensityCrop`), or None:
                     the plain random crop (rgb)
    variants:        view names of this kind from the config (default: [name]) - what is computed
    possible:        every view name of this kind the config may name (for the schema)
    job_gpus:        GPUs a producing job asks for, from the config and the view name (0 = CPU job)
    computed_when:   a config condition: the kind's views are computed only when it holds
    requirement:     what to set so that a view is computed ({variant} = the part after "<kind>_")
    ensemble_weight: default weight of the view in the test-time ensemble (CoCon: rgb/flow 2, pose/seg 1)
    """

    name: str
    channels: int
    default_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: Flip = Flip()
    flip_in_training: bool = True
    colour_jitter: bool = False
    variants: Callable[[dict], list[str]] | None = None
    possible: tuple[str, ...] = ()
    job_gpus: Callable[[dict, str], int] = field(default=lambda cfg, view: 0)
    computed_when: Callable[[dict], bool] | None = None
    requirement: str = ""
    ensemble_weight: float = 1.0
    intensity_crop: IntensityCrop | None = None

    def views(self, cfg: dict) -> list[str]:
        """The views of this kind that the configuration computes."""
        if self.computed_when is not None and not self.computed_when(cfg):
            return []
        return self.variants(cfg) if self.variants else [self.name]

    def missing(self, view: str) -> str:
        """What to change in the config so that `view` is computed."""
        return self.requirement.format(view=view, variant=view[len(self.name) + 1 :])

    def all_views(self) -> tuple[str, ...]:
        return self.possible or (self.name,)

    def normaliser(self, channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset) float32 (C,): network input = uint8 * scale + offset."""
        c = channels or self.channels
        mean = np.broadcast_to(np.asarray(self.mean, np.float32), (c,))
        std = np.broadcast_to(np.asarray(self.std, np.float32), (c,))
        return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


KINDS: dict[str, ViewKind] = {}


def register(kind: ViewKind) -> ViewKind:
    """Add (or replace) a kind; views named ``kind.name`` or ``kind.name_*`` are then of this kind."""
    KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    KINDS.pop(name, None)


class UnknownView(ValueError):
    pass


def kind_of(view: str) -> ViewKind:
    """The kind of a view name (``flow_tvl1`` -> flow)."""
    for kind in sorted(KINDS.values(), key=lambda k: -len(k.name)):
        if view == kind.name or view.startswith(kind.name + "_"):
            return kind
    raise UnknownView(f"unknown view {view!r}: known kinds are {', '.join(KINDS)} (views <kind> or <kind>_<variant>)")


def enabled_views(cfg: dict) -> list[str]:
    """Every view the configuration computes, in registry order (rgb first)."""
    return [v for kind in KINDS.values() for v in kind.views(cfg)]


def all_views() -> list[str]:
    """Every view name a configuration may name."""
    return [v for kind in KINDS.values() for v in kind.all_views()]


def channels(view: str) -> int:
    return kind_of(view).channels


def input_size(view: str, sizes: dict) -> int:
    """Training input side of `view` from a {view or kind: size} mapping, else the kind's default."""
    kind = kind_of(view)
    return int(sizes.get(view, sizes.get(kind.name, kind.default_size)))


# ------------------------------------------------------------------ the built-in kinds

FLOW_METHODS = ("tvl1", "farneback")


def tvl1_placement(p: dict, gpu_visible: bool) -> tuple[str, str]:
    """(backend, device) of TVL1 for the flow.tvl1 section `p` when a GPU is (not) visible: the one place
    that decides whether a flow job uses a GPU. opencv runs on the CPU; device auto is cuda when a GPU is
    visible; backend auto is torch on cuda (gamma 0: the torch backend has no gamma term), else opencv."""
    backend, device = p.get("backend", "opencv"), p.get("device", "auto")
    if backend == "opencv":
        return "opencv", "cpu"
    if device == "auto":
        device = "cuda" if gpu_visible else "cpu"
    if backend == "auto":
        return ("torch", device) if device.startswith("cuda") and p.get("gamma", 0) == 0 else ("opencv", "cpu")
    return "torch", device


def _flow_gpus(cfg: dict, view: str) -> int:
    """GPUs a flow job asks for (tvl1_placement): 1 for TVL1 on CUDA, where backend torch counts on one
    and backend auto on a machine that has one (cocon.workflow.gpus's list); 0 otherwise (Farneback)."""
    if view != "flow_tvl1":
        return 0
    t = cfg["flow"]["tvl1"]
    if t["backend"] == "auto" and t["device"] != "cpu":
        from cocon.workflow.gpus import machine_gpu_ids

        visible = bool(machine_gpu_ids())
    else:
        visible = t["backend"] == "torch"
    return int(tvl1_placement(t, visible)[1].startswith("cuda"))


register(
    ViewKind(
        name="rgb",
        channels=3,
        default_size=128,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        colour_jitter=True,
        ensemble_weight=2.0,
    )
)
register(
    ViewKind(
        name="flow",
        channels=2,
        default_size=128,
        mean=(0.5,),
        std=(0.5,),
        flip=Flip(negate=(0,)),
        flip_in_training=False,
        variants=lambda cfg: [f"flow_{m}" for m in cfg["flow"]["methods"]],
        possible=tuple(f"flow_{m}" for m in FLOW_METHODS),
        job_gpus=_flow_gpus,
        requirement="add '{variant}' to flow.methods",
        ensemble_weight=2.0,
        intensity_crop=IntensityCrop(side=224 / 240, measure="deviation"),  # 224 of UCF101's 240-px frames
    )
)
register(
    ViewKind(
        name="pose",
        channels=len(COCO_KEYPOINTS),
        default_size=64,
        mean=(0.0,),
        std=(1.0,),
        flip=Flip(permute=mirror_pairs(COCO_KEYPOINTS)),
        job_gpus=lambda cfg, view: cfg["pose"]["gpus"],
        intensity_crop=IntensityCrop(side=0.8, measure="value"),
        computed_when=lambda cfg: cfg["pose"]["enabled"],
        requirement="set pose.enabled: true",
    )
)
register(
    ViewKind(
        name="seg",
        channels=1,
        default_size=64,
        mean=(0.0,),
        std=(1.0,),
        job_gpus=lambda cfg, view: cfg["seg"]["gpus"],
        intensity_crop=IntensityCrop(side=0.8, measure="value"),
        computed_when=lambda cfg: cfg["seg"]["enabled"],
        requirement="set seg.enabled: true",
    )
)
