"""What the two inferred-view stages (pose, seg) share: OpenMMLab model loading, devices, registry
scopes, frame subsampling and the per-shard loop that turns rgb frames into a view. Spec: docs/pose_seg.md.

Models come from a config (a name shipped with the package, e.g. `td-hm_hrnet-w32_8xb64-210e_coco-256x192`,
or a path to a config file) and a checkpoint (an http(s) URL, downloaded once into torch's hub cache, a
local path, or None = random initialisation, which is recorded as `weights: none` and warned about).

Frame map: a view computed on a frame stride s from offset o stores at its index j the output for rgb
frame o + j*s (j = 0 .. ceil((T - o) / s) - 1). The loader reads both numbers from the shard's root
attributes `frame_stride` and `frame_offset` (cocon.data.clips.frame_map).

Importing this module registers the stand-ins of cocon.preprocess.mm_ops (mmcv-lite has no compiled
`mmcv._ext`; the PyPI xtcocotools does not load under numpy 2) before any OpenMMLab module is imported.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from cocon.data.shards import ShardReader
from cocon.preprocess import mm_ops, stage
from cocon.preprocess.video import resized_size
from cocon.provenance import distribution_versions

log = logging.getLogger("cocon")

PACKAGES = {"pose": "mmpose", "seg": "mmseg", "det": "mmdet"}
SCOPES = {"pose": "mmpose", "seg": "mmseg", "det": "mmdet"}
DISTRIBUTIONS = ("mmcv", "mmcv-lite", "mmengine", "mmpose", "mmsegmentation", "mmdet", "xtcocotools")
FRAME_INDEX = "j: output for rgb frame frame_offset + j * frame_stride"
VALUE_SCALE = 1.0 / 255.0  # stored uint8 q means confidence q * VALUE_SCALE


class ModelLoadError(RuntimeError):
    """A model that cannot be built or whose checkpoint cannot be loaded; names config and checkpoint."""


OPS = mm_ops.install()  # before any OpenMMLab import: mmcv.ops and mmpose import the compiled modules


# ---------------------------------------------------------------- devices, scopes, versions


@contextmanager
def scope(kind: str):
    """Run mm code of `kind` (pose | seg | det) in its registry scope, so that models of several
    OpenMMLab packages can be built and used in one process."""
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope(SCOPES[kind]):
        yield


def mm_versions() -> dict:
    """Versions of the OpenMMLab distributions ("absent" if not installed; mmcv or mmcv-lite) and what
    provides the compiled modules `mmcv._ext` and `xtcocotools._mask` (compiled, or the stand-ins of
    cocon.preprocess.mm_ops); recorded in the pose/seg shards."""
    return {**distribution_versions(DISTRIBUTIONS), **mm_ops.install()}


# ---------------------------------------------------------------- configs and checkpoints


def find_config(name_or_path: str, kind: str) -> Path:
    """A config file: an existing path, or a config name shipped in the package's `.mim/configs`."""
    p = Path(name_or_path)
    if p.suffix == ".py" and p.is_file():
        return p
    pkg = __import__(PACKAGES[kind])
    root = Path(pkg.__file__).parent / ".mim" / "configs"
    stem = p.stem if p.suffix == ".py" else p.name
    hits = sorted(root.rglob(f"{stem}.py"))
    if not hits:
        raise ModelLoadError(f"{kind} config {name_or_path!r}: no such file, and no config of that name in {root}")
    return hits[0]


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def local_checkpoint(spec: str) -> Path:
    """A checkpoint on disk: a local path as is, a URL downloaded once into torch's hub cache."""
    if not is_url(spec):
        p = Path(spec)
        if not p.is_file():
            raise FileNotFoundError(f"no such checkpoint file: {spec}")
        return p
    dest = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(spec.split("?")[0])
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s -> %s", spec, dest)
        torch.hub.download_url_to_file(spec, str(dest), progress=False)
    return dest


def read_checkpoint(path: Path) -> dict:
    """torch.load with weights_only=True; official OpenMMLab checkpoints keep numpy objects in their
    `meta`, so those are allowed on a second try. A checkpoint holding other objects (e.g. mmengine
    training state) is then unpickled in full, with a warning: the user configured that file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    try:
        multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray  # numpy 2 / numpy 1

        safe = [
            np.ndarray,
            np.dtype,
            multiarray._reconstruct,
            multiarray.scalar,
            (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            (multiarray.scalar, "numpy.core.multiarray.scalar"),
        ]  # names in files pickled by numpy 1
        safe += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        log.warning(
            "checkpoint %s holds objects beyond tensors and numpy arrays (%s); loading it in full "
            "(weights_only=False) because it was configured explicitly",
            path,
            str(exc).splitlines()[0],
        )
        return torch.load(path, map_location="cpu", weights_only=False)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_weights(model: torch.nn.Module, spec: str) -> tuple[dict, str]:
    """Load checkpoint `spec` (URL or path) into `model`, strictly (every parameter must be present);
    returns (the checkpoint's meta, the file's sha256)."""
    path = local_checkpoint(spec)
    ckpt = read_checkpoint(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError("the file holds no state_dict")
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"{len(missing)} parameters missing from the checkpoint, e.g. {missing[:3]}")
    if unexpected:
        log.warning("checkpoint %s: %d unused entries ignored, e.g. %s", spec, len(unexpected), unexpected[:3])
    meta = ckpt.get("meta", {}) if isinstance(ckpt, dict) else {}
    return (meta if isinstance(meta, dict) else {}), file_sha256(path)


def build_model(kind: str, config: str, checkpoint: str | None, device: str, seed: int, edit: Callable | None = None):
    """Build a pose | seg | det model from its config with the package's own init function (random
    initialisation, seeded), then load `checkpoint` unless None. `edit(cfg)` may change the mmengine
    Config first (test-time settings). Returns (model in eval mode on `device`, provenance dict).
    Any failure is a ModelLoadError naming the config and the checkpoint."""
    what = f"{kind} model (config {config!r}, checkpoint {checkpoint!r})"
    try:
        mm_ops.require()
        from mmengine.config import Config

        path = find_config(config, kind)
        cfg = Config.fromfile(str(path))
        if edit is not None:
            edit(cfg)
        torch.manual_seed(seed)
        with scope(kind):
            if kind == "pose":
                init_model = _init_pose_model
            elif kind == "seg":
                from mmseg.apis import init_model
            else:
                from mmdet.apis import init_detector as init_model
            model = init_model(cfg, None, device="cpu")
        meta, sha = {}, ""
        if checkpoint is not None:
            meta, sha = load_weights(model, checkpoint)
    except ModelLoadError:
        raise
    except mm_ops.StackMissing as exc:  # says what to install; no need to name the model
        raise ModelLoadError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - any failure to build or load is reported the same way
        raise ModelLoadError(f"cannot load the {what}: {type(exc).__name__}: {exc}") from exc
    if checkpoint is None:
        log.warning(
            "WEIGHTS: NONE - the %s is randomly initialised (seed %d): its outputs carry no "
            "information about people; configure a checkpoint for real data",
            what,
            seed,
        )
    model.to(device).eval()
    info = {
        "config": config,
        "config_file": str(path),
        "checkpoint": checkpoint or "none",
        "weights_sha256": sha,
        "dataset_meta": meta.get("dataset_meta") or ({"classes": meta["CLASSES"]} if meta.get("CLASSES") else None),
    }
    return model, info


def edit_resize(scale):
    """A config edit that sets the `scale` [w, h] of the Resize steps of the test pipeline (None: keep
    the config's; Cityscapes/ADE20K/COCO configs enlarge every frame to 512-2048 px)."""

    def edit(cfg):
        if scale:
            for pipe in (cfg.get("test_pipeline", []), cfg.test_dataloader.dataset.pipeline):
                for step in pipe:
                    kind = step["type"].split(".")[-1]
                    if kind == "Resize":
                        step["scale"] = tuple(scale)
                    elif kind == "Pad" and step.get("size"):  # detectors pad to their resize scale
                        step["size"] = tuple(scale)

    return edit


def _init_pose_model(cfg, checkpoint, device):
    """mmpose.apis.init_model without importing mmpose.apis, whose visualisers import torchvision (no
    CPU build of it matches torch 2.13 on PyPI): the same steps for checkpoint=None - no pretrained
    backbone, no train_cfg, SyncBN -> BN, dataset_meta from the config's training dataset."""
    from mmengine.model.utils import revert_sync_batchnorm
    from mmpose.datasets.datasets.utils import parse_pose_metainfo
    from mmpose.models.builder import build_pose_estimator
    from mmpose.registry import DATASETS

    if "init_cfg" in cfg.model.backbone:
        cfg.model.backbone.init_cfg = None
    cfg.model.train_cfg = None
    model = revert_sync_batchnorm(build_pose_estimator(cfg.model))
    ds = cfg.train_dataloader.dataset
    meta = ds.get("metainfo") or (ds.type if isinstance(ds.type, type) else DATASETS.get(ds.type)).METAINFO
    model.dataset_meta = parse_pose_metainfo(meta)
    model.cfg = cfg
    return model.to(device).eval()


def class_index(classes, name: str, what: str) -> int:
    """Index of class `name` (case-insensitive) in a model's dataset classes."""
    names = [str(c).lower() for c in classes]
    if name.lower() not in names:
        raise ModelLoadError(f"{what}: no class {name!r} among its classes {list(classes)[:30]}")
    return names.index(name.lower())


# ---------------------------------------------------------------- frames


def frame_indices(n_frames: int, stride: int, offset: int) -> np.ndarray:
    """rgb frames a strided view is computed on: offset, offset + stride, ... < n_frames."""
    return np.arange(offset, n_frames, stride, dtype=np.int64)


def out_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) of the stored maps: the frame scaled to `short_side`, aspect kept (as the rgb view)."""
    return resized_size(height, width, short_side)


def upscale_small(frames: list[np.ndarray], min_side: int) -> list[np.ndarray]:
    """Frames whose short side is below `min_side` are enlarged (bilinear) so that a model whose
    strides or pooling need a minimum size still runs; outputs are resized to the stored size anyway."""
    import cv2

    out = []
    for f in frames:
        h, w = f.shape[:2]
        if min(h, w) < min_side:
            nh, nw = resized_size(h, w, min_side)
            f = cv2.resize(f, (nw, nh), interpolation=cv2.INTER_LINEAR)
        out.append(f)
    return out


def batches(n: int, size: int):
    for lo in range(0, n, size):
        yield slice(lo, min(n, lo + size))


def to_uint8(conf: np.ndarray) -> np.ndarray:
    """Confidences in [0, 1] (float) -> uint8 q = round(clip(c, 0, 1) * 255); c = q * VALUE_SCALE."""
    return np.rint(np.clip(conf, 0.0, 1.0) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------- the per-shard loop


def run_view(
    view: str,
    rgb: str,
    shard: str,
    out: str,
    params: dict,
    dataset: dict,
    attrs: dict,
    compute: Callable[[int, np.ndarray, np.ndarray], np.ndarray],
    upstream: dict[str, ShardReader] | None = None,
) -> list[tuple[str, str]]:
    """The derived-view loop (cocon.preprocess.stage.derive_view) on the frame stride of `params`:
    `compute(row, idx, frames)` gets the rgb frame indices idx (int64 (T',)) and the frames uint8
    (T', H, W, 3) RGB and returns uint8 (T', h, w, C) confidences (q * VALUE_SCALE)."""
    stride, offset = int(params["frame_stride"]), int(params["frame_offset"])
    attrs = {
        "frame_stride": stride,
        "frame_offset": offset,
        "frame_index": FRAME_INDEX,
        "value_scale": VALUE_SCALE,
        "mm_versions": mm_versions(),
        **attrs,
    }
    return stage.derive_view(
        view,
        rgb,
        shard,
        out,
        params,
        dataset,
        attrs,
        compute,
        upstream=upstream,
        frames=lambda n: frame_indices(n, stride, offset),
        video_meta={"frame_stride": stride, "frame_offset": offset, "value_scale": VALUE_SCALE},
    )


def setup(threads: int) -> None:
    """stage.setup plus torch's intra-op threads; inference is deterministic for a given thread count."""
    stage.setup(threads)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
