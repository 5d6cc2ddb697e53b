"""What a training method is, over the shared engine (cocon.train.engine).

A method owns its networks, loss, optimiser settings, schedule and model selection; the engine owns
the loop, devices, DDP, precision, logging, checkpoints and exact resume. A method's constructor only
stores its arguments; the engine asks for the rest when it sets a run up.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from cocon import views as V
from cocon.data.clips import (
    Augmentation,
    ClipGeometry,
    MultiViewClips,
    Partition,
    discover,
    eval_centre_crop,
    training_augmentation,
)
from cocon.models.build import PerViewNetworks
from cocon.workflow.jobs import run_identity_config


class Method:
    """Base of the training methods (cpc, cocon, finetune). Subclasses set `name`, the number of views
    they train and override what differs; the defaults are those of pretraining (the `cpc` section, whose
    loss and optimiser settings both stages use)."""

    name: ClassVar[str] = ""
    min_views: ClassVar[int] = 1
    max_views: ClassVar[int | None] = None
    #: training augmentation (None = the pretraining default, cocon.data.clips.Augmentation()); the config's
    #: train.crop_area and train.intensity_crop replace its crop settings (training_augmentation)
    augmentation: ClassVar[Augmentation | None] = None

    def __init__(self, cfg: dict, views: list[str], init: dict[str, str] | None = None, init_kind: str | None = None):
        if len(views) < self.min_views or (self.max_views is not None and len(views) > self.max_views):
            n = f"{self.min_views}" if self.max_views == self.min_views else f"{self.min_views} or more"
            raise ValueError(f"method {self.name!r} trains {n} view(s), got {views}")
        for v in views:
            V.kind_of(v)  # unknown view names fail here
        self.cfg, self.views, self.init = cfg, list(views), dict(init or {})
        self.init_kind = init_kind
        self.tc = cfg["train"]

    @property
    def command(self) -> str:
        """The workflow command (cocon.workflow.jobs) whose results part configures this run."""
        return self.name

    # ------------------------------------------------------------ hyper-parameters
    @property
    def epochs(self) -> int:
        return int(self.cfg[self.name]["epochs"])

    @property
    def section(self) -> dict:
        """The config section holding lr, weight_decay, batch_size, max_steps_per_epoch."""
        return self.cfg["cpc"]

    def batch_size(self) -> int:
        """Clips per optimiser step over all processes (the global batch)."""
        return int(self.section["batch_size"])

    def max_steps_per_epoch(self) -> int | None:
        return self.section["max_steps_per_epoch"]

    def optimizer(self, params) -> torch.optim.Optimizer:
        s = self.section
        fused = self.cfg["runtime"]["fused_adam"] and torch.cuda.is_available()
        return torch.optim.Adam(
            params, lr=s["lr"], weight_decay=s["weight_decay"], **({"fused": True} if fused else {})
        )

    def scheduler(self, opt):
        """ReduceLROnPlateau (x0.1) on the validation total loss (CoCon's schedule)."""
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=0.1, patience=self.section["plateau_patience"], min_lr=self.section["min_lr"]
        )

    def scheduler_step(self, sched, val: dict[str, float]) -> None:
        sched.step(val["total"])

    # ------------------------------------------------------------ data and networks
    def datasets(self) -> tuple[MultiViewClips, MultiViewClips]:
        """Training clips (the training role minus the held-out subset) and validation clips (the subset)."""
        tc, cfg = self.tc, self.cfg
        sizes = {v: V.input_size(v, tc["input_size"]) for v in self.views}
        common = dict(
            shards=discover(cfg["output_dir"], self.views),
            views=self.views,
            partition=self.partition(),
            clip=ClipGeometry(tc["num_blocks"], tc["block_len"], tc["stride"], sizes=sizes),
            seed=cfg["seed"],
        )
        return (
            MultiViewClips(
                role="train", augment=True, augmentation=training_augmentation(cfg, self.augmentation), **common
            ),
            MultiViewClips(role="val", augment=False, centre_crop=eval_centre_crop(cfg), **common),
        )

    def partition(self) -> Partition:
        """Which videos train and validate: the training role minus the validation subset, and the subset."""
        return Partition(split=self.cfg["dataset"]["split"], fraction=self.tc["val_fraction"], seed=self.cfg["seed"])

    def networks(self, train_set: MultiViewClips) -> PerViewNetworks:
        raise NotImplementedError

    # ------------------------------------------------------------ loss and selection
    def loss(self, batch: dict, outputs: dict, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scalar tensors of one batch; "total" is minimised. `weights` (B,) float: 1 for a real clip,
        0 for a DistributedSampler padding duplicate (terms that are per-clip means use it)."""
        raise NotImplementedError

    def select_epoch(self, history: list[dict]) -> int:
        """The epoch whose weights become model.pt (pretraining: the last)."""
        return self.epochs - 1

    def identity(self) -> dict:
        """What identifies a run of this method (its checkpoints resume only into the same run): the results
        part of its job's config (cocon.workflow.jobs; speed-only settings are not in it) without the epoch
        count (raising it continues a finished run), its views and where its initial weights come from."""
        return {
            "method": self.name,
            "views": self.views,
            "config": run_identity_config(self.cfg, self.command, self.views),
            "init": sorted(self.init),
        }

    def checkpoint_extras(self) -> dict:
        return {}
