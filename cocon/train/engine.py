"""Training stages: per-view CPC pretraining (stage 1) and CoCon joint training (stage 2).

    python -m cocon.train.engine --stage cpc --views rgb --config-json '{...}' --out results/train/cpc/rgb
    python -m cocon.train.engine --stage cocon --views rgb flow_tvl1 --config-json '{...}' \
        --init rgb=results/train/cpc/rgb/model.pt --init flow_tvl1=... --out results/train/cocon

Each view has its own DPC network (encoder f, ConvGRU g, predictor phi; cocon.models.networks). Stage 1
minimises L_cpc of one view; stage 2 minimises L_cocon = sum_v L_cpc + lam * sum_pairs L_coop over
all views, starting from the stage-1 weights (cocon.models.losses). Adam (lr 1e-3, weight decay 1e-5),
ReduceLROnPlateau (x0.1, down to min_lr) on the total loss of a validation subset held out from the
training role (never the test split). With `train.gpus` > 1 the job relaunches itself under torchrun
(one DDP process per GPU; negatives and BatchNorm statistics span the global batch).

Outputs in --out: checkpoints/epoch_NNNN.pt (every epoch) and checkpoints/last.pt (resume point),
model.pt (final: per-view state_dicts + config + provenance), metrics.csv (one row per epoch),
tb/ (TensorBoard scalars). A job restarted in the same --out resumes exactly where the last
checkpoint left off: model, optimiser, scheduler, RNG states and data position (the epoch).
Layout of the files: docs/training.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cocon.train import distributed as D
from cocon.data.clips import CHANNELS, MultiViewClips, discover, make_loader, view_kind
from cocon.config import add_config_args, config_from_args
from cocon.models.losses import cocon_loss
from cocon.models.networks import DPC
from cocon.provenance import code_revision, dumps, library_versions

log = logging.getLogger("cocon.train.engine")
CHECKPOINT_VERSION = 1


class PerViewNetworks(nn.ModuleDict):
    """One network per view, keyed by view name (a DPC in pretraining, an ActionClassifier in
    fine-tuning); forward({view: (B, N, C, K, H, W)}) -> {view: that network's output}. One module, so
    DDP synchronises all views' gradients together."""

    def forward(self, x: dict[str, torch.Tensor]) -> dict:
        return {v: self[v](x[v]) for v in x}


def build_models(views: list[str], tc: dict) -> PerViewNetworks:
    return PerViewNetworks({
        v: DPC(CHANNELS[view_kind(v)], depth=tc["depth"], num_blocks=tc["num_blocks"], pred_steps=tc["pred_steps"],
               width=tc["width"])
        for v in views
    })


def build_datasets(cfg: dict, views: list[str], augmentation=None) -> tuple[MultiViewClips, MultiViewClips]:
    """Training clips (train role minus the held-out subset) and validation clips (the subset)."""
    tc = cfg["train"]
    shards = discover(cfg["output_dir"], views)
    sizes = {v: tc["input_size"][view_kind(v)] for v in views}
    common = dict(shards=shards, views=views, split=cfg["dataset"]["split"], holdout_fraction=tc["val_fraction"],
                  holdout_seed=cfg["seed"], num_blocks=tc["num_blocks"], block_len=tc["block_len"],
                  stride=tc["stride"], sizes=sizes, seed=cfg["seed"])
    return (MultiViewClips(role="train", augment=True, augmentation=augmentation, **common),
            MultiViewClips(role="val", augment=False, **common))


# Left out of the run hash: the epoch counts (raising them continues a finished run) and the speed-only
# options (memory layout, compilation), which change no result beyond float rounding, so a run may be
# resumed with them switched, and checkpoints written before they existed still resume.
NOT_HASHED = ("cpc_epochs", "cocon_epochs", "channels_last", "compile")


def run_hash(stage: str, views: list[str], cfg: dict, init: dict[str, str]) -> str:
    """Identifies what a checkpoint belongs to: resuming with another config is refused (NOT_HASHED
    keys excepted)."""
    train = {k: v for k, v in cfg["train"].items() if k not in NOT_HASHED}
    keep = {"stage": stage, "views": views, "train": train, "seed": cfg["seed"], "dataset": cfg["dataset"],
            "init": sorted(init)}
    return hashlib.sha256(dumps(keep).encode()).hexdigest()[:16]


INPUTS_FILE = "inputs.txt"


def input_fingerprint(output_dir: str, views: list[str], init: dict[str, str]) -> str:
    """Hash of what a run reads besides its config: every shard's (path, size, mtime) and the bytes of
    the --init models. Kept in checkpoints/inputs.txt (not in the checkpoints, which stay byte-identical
    across reruns: this holds file times); a resume with other inputs (rewritten shards, a retrained
    init model) starts afresh instead of resuming into stale weights."""
    digest = hashlib.sha256()
    for view, paths in sorted(discover(output_dir, views).items()):
        for p in paths:
            st = os.stat(p)
            digest.update(f"{view}\0{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for view, path in sorted(init.items()):
        with open(path, "rb") as fh:
            digest.update(view.encode() + b"\0" + hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()[:16]


def rng_state() -> dict:
    """Every RNG's state in types that torch.load(weights_only=True) accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj, path: Path) -> None:
    """torch.save to <path>.partial, then rename: a killed job never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def channels_last_3d(x: torch.Tensor) -> torch.Tensor:
    """Same values and shape (..., C, K, H, W), with C innermost in memory, so that the (C, K, H, W)
    blocks the encoder sees (the 6-D clip reshaped to (B*N, C, K, H, W) without a copy) are in
    torch.channels_last_3d format (a 5-D tensor is simply converted)."""
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x.movedim(-4, -1).contiguous().movedim(-1, -4)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by this module (tensors and plain Python types only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


class Trainer:
    """One training run (a stage) in one process of a possibly distributed job."""

    def __init__(self, stage: str, views: list[str], cfg: dict, out: Path, init: dict[str, str]):
        self.stage, self.views, self.cfg, self.out, self.init = stage, views, cfg, out, init
        self.tc = tc = cfg["train"]
        self.hp = self.hyperparameters()
        self.epochs = self.hp["epochs"]
        self.device = D.setup(tc["device"])
        self.precision = tc["precision"]
        if self.precision == "auto":
            self.precision = "bf16" if self.device.type == "cuda" else "fp32"
        seed = cfg["seed"]
        torch.manual_seed(seed)  # identical initial weights on every rank
        np.random.seed(seed)
        random.seed(seed)
        self.train_set, self.val_set = self.make_datasets()
        self.models = self.build_models()
        self.models = D.convert_batchnorm(self.models, self.device).to(self.device)
        self.channels_last = tc["channels_last"]
        if self.channels_last:  # the encoders' Conv3d weights (g and phi are 1x1 Conv2d on S x S maps)
            for m in self.models.values():
                m.encoder.to(memory_format=torch.channels_last_3d)
        if tc["compile"]:
            # in place (nn.Module.compile) and before the DDP wrapper, as the torch.compile docs advise:
            # parameters, state_dict keys, checkpoints and resume are those of the uncompiled networks
            for m in self.models.values():
                m.compile()
            log.info("torch.compile: per-view networks %s compiled in place (inductor); the first train and "
                     "val steps include the compilation", views)
        self.net = self.models
        if D.world_size() > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.models, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.opt = torch.optim.Adam(self.models.parameters(), lr=self.hp["lr"], weight_decay=self.hp["weight_decay"])
        self.sched = self.make_scheduler()
        per_rank = self.hp["batch_size"]
        self.train_loader = make_loader(self.train_set, per_rank, tc["workers"], shuffle=True, seed=seed,
                                        distributed=True, drop_last=len(self.train_set) >= per_rank * D.world_size())
        self.val_loader = make_loader(self.val_set, per_rank, tc["workers"], shuffle=False, seed=seed,
                                      distributed=True)
        self.hash = self.run_hash()
        self.inputs = input_fingerprint(cfg["output_dir"], views, init)
        self.start_epoch = 0
        self.history: list[dict] = []
        self.writer = None

    # -- what a stage defines (stage 1/2 here; fine-tuning in cocon.train.finetune)
    def hyperparameters(self) -> dict:
        """epochs, lr, weight_decay, batch_size (per process), max_steps_per_epoch."""
        tc = self.tc
        return {"epochs": tc["cpc_epochs"] if self.stage == "cpc" else tc["cocon_epochs"], "lr": tc["lr"],
                "weight_decay": tc["weight_decay"], "batch_size": tc["batch_size"],
                "max_steps_per_epoch": tc["max_steps_per_epoch"]}

    def make_datasets(self) -> tuple[MultiViewClips, MultiViewClips]:
        return build_datasets(self.cfg, self.views)

    def build_models(self) -> nn.ModuleDict:
        """{view: network}, with the --init weights loaded."""
        models = build_models(self.views, self.tc)
        for v, path in self.init.items():
            models[v].load_state_dict(load_checkpoint(path)["models"][v])
        return models

    def make_scheduler(self):
        tc = self.tc
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="min", factor=0.1, patience=tc["plateau_patience"], min_lr=tc["min_lr"])

    def scheduler_step(self, val: dict[str, float]) -> None:
        self.sched.step(val["total"])

    def loss_terms(self, batch: dict, outputs: dict) -> dict[str, torch.Tensor]:
        """Scalar tensors; "total" is minimised."""
        outputs = {v: type(o)(*(t.float() for t in o)) for v, o in outputs.items()}
        return cocon_loss(outputs, lam=self.tc["lam"], alpha=self.tc["alpha"], variant=self.tc["loss_variant"],
                          temperature=self.tc["temperature"], groups=batch["group"].to(self.device),
                          mask_group_negatives=not self.tc["sibling_negatives"])

    def final_epoch(self) -> int:
        """The epoch whose weights become model.pt (the last one here)."""
        return self.epochs - 1

    def run_hash(self) -> str:
        return run_hash(self.stage, self.views, self.cfg, self.init)

    @staticmethod
    def run_main(module: str, argv: list[str], cfg: dict, threads: int | None, make) -> None:
        """A stage's CLI body: relaunch under torchrun when several GPUs are asked for, set up logging
        and threads, build the trainer (`make()`), fit, and print the final metrics as JSON."""
        D.relaunch_under_torchrun(cfg["train"]["gpus"] if torch.cuda.is_available() else 1, module, argv)
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{D.rank()} %(levelname)s %(message)s",
                            stream=sys.stderr)
        if threads:
            torch.set_num_threads(max(1, threads // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))))
        trainer = make()
        try:
            trainer.fit()
        finally:
            D.teardown()
        if D.is_main():
            print(json.dumps({"stage": trainer.stage, "views": trainer.views, "epochs": trainer.epochs,
                              "final": trainer.history[-1] if trainer.history else None}), file=sys.stderr)

    # -- checkpoints
    def checkpoint(self, epoch: int) -> dict:
        return {
            "version": CHECKPOINT_VERSION, "stage": self.stage, "views": self.views, "run_hash": self.hash,
            "epoch": epoch, "models": {v: m.state_dict() for v, m in self.models.items()},
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "rng": rng_state(),
            "history": self.history, "config": dumps(self.cfg), "code_revision": dumps(code_revision()),
            "library_versions": dumps(library_versions()),
        }

    def try_resume(self) -> None:
        last = self.out / "checkpoints" / "last.pt"
        if not last.exists():
            return
        ck = load_checkpoint(last)
        stamp = self.out / "checkpoints" / INPUTS_FILE
        inputs = stamp.read_text().strip() if stamp.exists() else self.inputs
        if ck.get("run_hash") != self.hash or inputs != self.inputs:
            # another configuration (Snakemake reran the job because train.* changed): start afresh,
            # keeping the previous run's checkpoints aside rather than deleting them
            aside = self.out / "checkpoints.previous"
            if D.is_main():
                if aside.exists():
                    shutil.rmtree(aside)
                os.replace(self.out / "checkpoints", aside)
            log.warning("%s belongs to another configuration or other inputs (run hash %s, now %s; inputs %s, "
                        "now %s): starting afresh; its checkpoints were moved to %s", last, ck.get("run_hash"),
                        self.hash, inputs, self.inputs, aside)
            return
        for v, m in self.models.items():
            m.load_state_dict(ck["models"][v])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        set_rng_state(ck["rng"])
        self.history = list(ck["history"])
        self.start_epoch = ck["epoch"] + 1
        log.info("resumed from %s at epoch %d", last, self.start_epoch)

    # -- one pass
    def _step(self, batch, train: bool) -> dict[str, float]:
        x = {v: batch[v].to(self.device, non_blocking=True) for v in self.views}
        if self.channels_last:
            x = {v: channels_last_3d(t) for v, t in x.items()}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            outputs = self.net(x)
        terms = self.loss_terms(batch, outputs)
        if train:
            self.opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            self.opt.step()
        return {k: float(t.detach()) for k, t in terms.items()}

    def _epoch(self, loader, epoch: int, train: bool) -> dict[str, float]:
        self.models.train(train)
        loader.set_epoch(epoch)
        sums: dict[str, float] = {}
        n = 0
        limit = self.hp["max_steps_per_epoch"] if train else None
        desc = f"{self.stage} {'train' if train else 'val'} epoch {epoch}"
        with torch.set_grad_enabled(train):
            for i, batch in enumerate(tqdm(loader, desc=desc, file=sys.stderr, mininterval=5, disable=not D.is_main())):
                if limit is not None and i >= limit:
                    break
                terms = self._step(batch, train)
                for k, val in terms.items():
                    sums[k] = sums.get(k, 0.0) + val
                n += 1
        return {k: D.reduce_mean(s / max(n, 1), self.device) for k, s in sums.items()}

    def fit(self) -> None:
        self.try_resume()
        if D.is_main():
            (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
            stamp = self.out / "checkpoints" / INPUTS_FILE
            stamp.with_name(INPUTS_FILE + ".partial").write_text(self.inputs + "\n")
            os.replace(stamp.with_name(INPUTS_FILE + ".partial"), stamp)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))
        log.info("%s on %s: %d train / %d val clips, views %s, %d process(es), %s%s%s, epochs %d..%d",
                 self.stage, self.device, len(self.train_set), len(self.val_set), self.views, D.world_size(),
                 self.precision, ", channels_last" if self.channels_last else "",
                 ", compiled" if self.tc["compile"] else "", self.start_epoch, self.epochs - 1)
        for epoch in range(self.start_epoch, self.epochs):
            t0 = time.perf_counter()
            tr = self._epoch(self.train_loader, epoch, train=True)
            va = self._epoch(self.val_loader, epoch, train=False)
            self.scheduler_step(va)
            seconds = time.perf_counter() - t0  # logged, not stored: metrics stay identical across reruns
            row = {"epoch": epoch, "lr": self.opt.param_groups[0]["lr"],
                   **{f"train/{k}": v for k, v in tr.items()}, **{f"val/{k}": v for k, v in va.items()}}
            self.history.append(row)
            if D.is_main():
                for k, v in row.items():
                    if k not in ("epoch",):
                        self.writer.add_scalar(k, v, epoch)
                save_atomic(self.checkpoint(epoch), self.out / "checkpoints" / f"epoch_{epoch:04d}.pt")
                save_atomic(self.checkpoint(epoch), self.out / "checkpoints" / "last.pt")
                log.info("epoch %d: train total %.4f val total %.4f lr %.2e (%.1f s)", epoch, tr["total"],
                         va["total"], row["lr"], seconds)
        if D.is_main():
            self.writer.close()
            self.write_outputs()

    def write_outputs(self) -> None:
        """model.pt (final weights + provenance) and metrics.csv, written atomically, last."""
        final = self.checkpoint(self.epochs - 1)
        best = self.final_epoch()
        if best != self.epochs - 1:
            final["models"] = load_checkpoint(self.out / "checkpoints" / f"epoch_{best:04d}.pt")["models"]
        final["selected_epoch"] = best
        for key in ("optimizer", "scheduler", "rng"):
            final.pop(key)
        keys = sorted({k for row in self.history for k in row}, key=lambda k: (k != "epoch", k))
        tmp = self.out / "metrics.csv.partial"
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys, lineterminator="\n")
            w.writeheader()
            for row in self.history:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        os.replace(tmp, self.out / "metrics.csv")
        save_atomic(final, self.out / "model.pt")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description="CPC (stage 1) or CoCon (stage 2) training.")
    p.add_argument("--stage", required=True, choices=("cpc", "cocon"))
    p.add_argument("--views", required=True, nargs="+")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--init", action="append", default=[], metavar="VIEW=PATH", help="stage-1 model.pt per view")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads per process")
    add_config_args(p)
    a = p.parse_args(argv)
    cfg = config_from_args(a)
    if a.stage == "cpc" and len(a.views) != 1:
        p.error("--stage cpc trains exactly one view")
    if a.stage == "cocon" and len(a.views) < 2:
        p.error("--stage cocon needs at least two views")
    init = dict(item.split("=", 1) for item in a.init)
    Trainer.run_main("cocon.train.engine", argv, cfg, a.threads, lambda: Trainer(a.stage, a.views, cfg, a.out, init))


if __name__ == "__main__":
    main()
