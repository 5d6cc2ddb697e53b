"""The training engine: runs a method (cocon.train.methods) on one process of a possibly distributed job.

The engine owns the loop, devices, DDP, precision, logging, checkpoints and exact resume; the method
owns its networks, loss, schedule and model selection. Outputs in the run folder (docs/training.md):
checkpoints/last.pt (the resume point, every epoch), checkpoints/best.pt (the selected epoch's weights when
it is not the last), checkpoints/epoch_NNNN.pt (only as runtime.keep_checkpoints asks), model.pt (the
selected epoch's weights + provenance), metrics.csv (one row per epoch), tb/ (TensorBoard scalars). A job
restarted in the same folder resumes after the last completed epoch, and ends with the weights and metrics
of an uninterrupted run; with more epochs configured, a finished run continues. Under a scheduler's time
limit the run stops itself at an epoch boundary when the next epoch would not fit (cocon.train.deadline).

    engine = Engine(CPC(cfg, ["rgb"]), out=Path("results/train/cpc/rgb"))
    engine.fit()
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from cocon.data.clips import make_loader
from cocon.files import save_torch, write_text
from cocon.provenance import code_revision, dumps, library_versions
from cocon.runtime import resolve_device
from cocon.train import distributed as D
from cocon.train.checkpoints import (
    CHECKPOINT_VERSION,
    INPUTS_FILE,
    epoch_seed,
    input_fingerprint,
    load_checkpoint,
    rng_state,
    run_hash,
    seed_everything,
)
from cocon.train.deadline import Deadline, DeadlineReached, epoch_estimate, record_epoch
from cocon.train.methods.base import Method

log = logging.getLogger("cocon.train")


def channels_last_3d(x: torch.Tensor) -> torch.Tensor:
    """Same values and shape (..., C, K, H, W), with C innermost in memory, so that the (C, K, H, W)
    blocks the encoder sees (the 6-D clip reshaped to (B*N, C, K, H, W) without a copy) are in
    torch.channels_last_3d format (a 5-D tensor is simply converted)."""
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x.movedim(-4, -1).contiguous().movedim(-1, -4)


def padding_weights(n_local: int, start: int, dataset_len: int) -> torch.Tensor:
    """(n_local,) float: 1 for a real sample, 0 for a DistributedSampler padding duplicate. The sampler
    pads the epoch's index list to a multiple of the world size and deals it out round-robin, so local
    position p of this rank is global position rank + p * world; positions >= len(dataset) are padding."""
    pos = D.rank() + (start + torch.arange(n_local)) * D.world_size()
    return (pos < dataset_len).float()


class Engine:
    """One run of `method` in the folder `out` (see the module docstring). `setup()` builds everything
    (the constructor only stores); `fit()` sets up, resumes if it can, trains and writes the outputs."""

    def __init__(self, method: Method, out: Path, device_augment: bool | None = None, deadline: Deadline | None = None):
        self.method, self.out = method, Path(out)
        self.deadline = deadline or Deadline(None)
        # uint8 clips from the workers, augmentation finished per batch on the training device
        # (cocon.data.augment): the default on every device (on a CPU too, batched finishing is faster than
        # per-sample); False makes the workers finish each sample with the same function.
        self._device_augment = device_augment
        self.cfg, self.views = method.cfg, method.views
        self.tc, self.rt = method.cfg["train"], method.cfg["runtime"]
        self.epochs = method.epochs
        self.start_epoch = 0
        self.history: list[dict] = []
        self._ready = False

    # ------------------------------------------------------------ set-up
    def setup(self) -> None:
        if self._ready:
            return
        tc, rt, method = self.tc, self.rt, self.method
        device = resolve_device(rt["device"])
        self.device = D.setup(device)
        self.precision = tc["precision"]
        if self.precision == "auto":
            self.precision = "bf16" if self.device.type == "cuda" else "fp32"
        if self.device.type == "cuda" and rt["cudnn_benchmark"]:
            torch.backends.cudnn.benchmark = True
        seed_everything(self.cfg["seed"])  # identical initial weights on every rank
        self.train_set, self.val_set = method.datasets()
        self.models = D.convert_batchnorm(method.networks(self.train_set), self.device).to(self.device)
        self.channels_last = rt["channels_last"]
        if self.channels_last:  # the encoders' Conv3d weights (g and phi are 1x1 Conv2d on S x S maps)
            for m in self.models.values():
                m.encoder.to(memory_format=torch.channels_last_3d)
        if rt["compile"]:
            # in place (nn.Module.compile) and before the DDP wrapper, as the torch.compile docs advise:
            # parameters, state_dict keys, checkpoints and resume are those of the uncompiled networks
            for m in self.models.values():
                m.compile()
            log.info(
                "torch.compile: per-view networks %s compiled in place (inductor); the first train and "
                "val steps include the compilation",
                self.views,
            )
        self.net = self.models
        if D.world_size() > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.models, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        params = [p for p in self.models.parameters() if p.requires_grad]
        self.opt = method.optimizer(params)
        self.sched = method.scheduler(self.opt)
        world = D.world_size()
        per_rank = max(1, method.batch_size() // world)
        if method.batch_size() % world:
            log.warning(
                "batch size %d is not a multiple of the %d processes: %d clips per process",
                method.batch_size(),
                world,
                per_rank,
            )
        self.per_rank = per_rank
        seed = self.cfg["seed"]
        workers, pin = rt["workers"], self.device.type == "cuda"
        self.device_augment = True if self._device_augment is None else bool(self._device_augment)
        if self.device_augment:  # workers hand over uint8 clips (pinned), finished on the device in _step
            self.train_set.output = self.val_set.output = "uint8"
            self.finish = self.train_set.finisher()
        self.train_loader = make_loader(
            self.train_set,
            per_rank,
            workers,
            shuffle=True,
            seed=seed,
            distributed=True,
            drop_last=len(self.train_set) >= per_rank * world,
            pin_memory=pin,
        )
        self.val_loader = make_loader(
            self.val_set, per_rank, workers, shuffle=False, seed=seed, distributed=True, pin_memory=pin
        )
        self.hash = run_hash(method.identity())
        self.inputs = input_fingerprint(self.cfg["output_dir"], self.views, method.init)
        self._ready = True

    # ------------------------------------------------------------ checkpoints
    def checkpoint(self, epoch: int) -> dict:
        return {
            "version": CHECKPOINT_VERSION,
            "method": self.method.name,
            "views": self.views,
            "run_hash": self.hash,
            "epoch": epoch,
            "models": {v: m.state_dict() for v, m in self.models.items()},
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": rng_state(),
            # a JSON round trip: the same rows pickle to the same bytes, whether they were built in this
            # process or loaded from a checkpoint (pickle writes shared and distinct equal strings apart)
            "history": json.loads(json.dumps(self.history)),
            "config": dumps(self.cfg),
            "code_revision": dumps(code_revision()),
            "library_versions": dumps(library_versions()),
            **self.method.checkpoint_extras(),
        }

    def resume(self) -> None:
        """Continue from checkpoints/last.pt when it belongs to this run and these inputs; a checkpoint of
        another configuration or of other inputs is moved to checkpoints.previous/ and training starts afresh."""
        self.setup()
        last = self.out / "checkpoints" / "last.pt"
        if not last.exists():
            return
        ck = load_checkpoint(last)
        stamp = self.out / "checkpoints" / INPUTS_FILE
        inputs = stamp.read_text().strip() if stamp.exists() else self.inputs
        why = None
        if ck.get("run_hash") != self.hash or inputs != self.inputs:
            why = (
                f"it belongs to another configuration or other inputs (run hash {ck.get('run_hash')}, now "
                f"{self.hash}; inputs {inputs}, now {self.inputs})"
            )
        elif ck["epoch"] >= self.epochs:
            why = f"it is at epoch {ck['epoch']}, past the {self.epochs} epochs now configured"
        if why:
            aside = self.out / "checkpoints.previous"
            D.barrier()  # every process has read last.pt before it moves
            if D.is_main():
                if aside.exists():
                    shutil.rmtree(aside)
                os.replace(self.out / "checkpoints", aside)
            D.barrier()
            log.warning("%s: %s; starting afresh, its checkpoints were moved to %s", last, why, aside)
            return
        for v, m in self.models.items():
            m.load_state_dict(ck["models"][v])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.history = list(ck["history"])
        self.start_epoch = ck["epoch"] + 1
        log.info("resumed from %s at epoch %d", last, self.start_epoch)

    # ------------------------------------------------------------ one pass
    def _step(self, batch: dict, weights: torch.Tensor, train: bool) -> dict[str, torch.Tensor]:
        if self.device_augment:  # non-blocking copies of the uint8 clips, then the float work on the device
            x = self.finish(batch, self.device, contiguous=not self.channels_last)
        else:
            x = {v: batch[v].to(self.device, non_blocking=True) for v in self.views}
        if self.channels_last:
            x = {v: channels_last_3d(t) for v, t in x.items()}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            outputs = self.net(x)
        terms = self.method.loss(batch, outputs, weights.to(self.device))
        if train:
            self.opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            self.opt.step()
        return {k: t.detach() for k, t in terms.items()}

    def _epoch(self, loader, epoch: int, train: bool) -> dict[str, float]:
        """One pass; each term is the mean over the clips of the pass (batches weighted by their real
        clips, DistributedSampler padding left out), over all processes. No host synchronisation per step:
        the sums stay on the device until the end of the pass."""
        self.models.train(train)
        loader.set_epoch(epoch)
        sums: dict[str, torch.Tensor] = {}
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        limit = self.method.max_steps_per_epoch() if train else None
        desc = f"{self.method.name} {'train' if train else 'val'} epoch {epoch}"
        seen = 0
        with torch.set_grad_enabled(train):
            for i, batch in enumerate(tqdm(loader, desc=desc, file=sys.stderr, mininterval=5, disable=not D.is_main())):
                if limit is not None and i >= limit:
                    break
                n = len(batch["index"])
                w = padding_weights(n, seen, len(loader.dataset))
                seen += n
                terms = self._step(batch, w, train)
                real = w.sum().to(self.device, torch.float64)
                for k, t in terms.items():
                    sums[k] = sums.get(k, 0.0) + t.double() * real
                count += real
        keys = sorted(sums)
        totals = torch.stack([sums[k] for k in keys] + [count]) if keys else count[None]
        totals = D.all_reduce_sum(totals)
        n = max(float(totals[-1]), 1.0)
        return {k: float(totals[i]) / n for i, k in enumerate(keys)}

    # ------------------------------------------------------------ the run
    def fit(self) -> list[dict]:
        self.resume()
        if D.is_main():
            write_text(self.out / "checkpoints" / INPUTS_FILE, self.inputs + "\n")
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out / "tb"))
        log.info(
            "%s on %s: %d train / %d val clips, views %s, %d process(es) x %d clips, %s%s%s, epochs %d..%d",
            self.method.name,
            self.device,
            len(self.train_set),
            len(self.val_set),
            self.views,
            D.world_size(),
            self.per_rank,
            self.precision,
            ", channels_last" if self.channels_last else "",
            ", compiled" if self.rt["compile"] else "",
            self.start_epoch,
            self.epochs - 1,
        )
        self.trained_from = self.start_epoch
        try:
            for epoch in range(self.start_epoch, self.epochs):
                self.stop_if_out_of_time(epoch)
                t0 = time.perf_counter()
                seed_everything(epoch_seed(self.cfg["seed"], epoch, D.rank()))
                tr = self._epoch(self.train_loader, epoch, train=True)
                va = self._epoch(self.val_loader, epoch, train=False)
                self.method.scheduler_step(self.sched, va)
                seconds = time.perf_counter() - t0  # logged, not stored: metrics stay identical across reruns
                row = {
                    "epoch": epoch,
                    "lr": self.opt.param_groups[0]["lr"],
                    **{f"train/{k}": v for k, v in tr.items()},
                    **{f"val/{k}": v for k, v in va.items()},
                }
                self.history.append(row)
                if D.is_main():
                    for k, v in row.items():
                        if k != "epoch":
                            writer.add_scalar(k, v, epoch)
                    self.save_checkpoints(epoch)
                    record_epoch(self.out / "checkpoints", time.perf_counter() - t0)
                    log.info(
                        "epoch %d: train total %.4f val total %.4f lr %.2e (%.1f s)",
                        epoch,
                        tr.get("total", 0.0),
                        va.get("total", 0.0),
                        row["lr"],
                        seconds,
                    )
        finally:
            if D.is_main():
                writer.close()
        if D.is_main():
            self.write_outputs()
        return self.history

    def stop_if_out_of_time(self, epoch: int) -> None:
        """Before `epoch`: raise DeadlineReached (exit code 75, the retry resumes) when the job's deadline
        does not leave time for one more epoch (the longest of the last recorded ones). Rank 0 decides for
        all processes. The first epoch of a run, with no duration recorded yet, always starts."""
        if self.deadline.end is None:
            return
        stop = 0.0
        if D.is_main():
            estimate = epoch_estimate(self.out / "checkpoints")
            stop = float(estimate is not None and not self.deadline.fits(estimate))
        if not float(D.all_reduce_sum(torch.tensor([stop], device=self.device))[0]):
            return
        left = max(0.0, self.deadline.left())
        estimate = epoch_estimate(self.out / "checkpoints") or 0.0
        raise DeadlineReached(
            f"stopping before epoch {epoch}: it would take ~{estimate / 60:.1f} min and the job has "
            f"{left / 60:.1f} min left before its time limit (minus {self.deadline.margin:.0f} s to finish); "
            f"checkpoints/last.pt holds epochs 0..{epoch - 1} and a retry resumes from it"
            + (
                ". Not one epoch fits in this job's time: raise the rule's runtime (or runtime.max_job_minutes)"
                if epoch == self.trained_from
                else ""
            )
        )

    def save_checkpoints(self, epoch: int) -> None:
        """After `epoch`: last.pt (the resume point); best.pt (weights only) when the method selects this
        epoch so far and it is not the last; epoch_NNNN.pt for the newest runtime.keep_checkpoints epochs
        (null: every epoch), older ones deleted. best.pt goes first: a job killed between the two writes
        resumes from the previous last.pt and writes both again."""
        folder = self.out / "checkpoints"
        ck = self.checkpoint(epoch)
        if epoch < self.epochs - 1 and self.method.select_epoch(self.history) == epoch:
            save_torch({"epoch": epoch, "run_hash": self.hash, "models": ck["models"]}, folder / "best.pt")
        keep = self.rt["keep_checkpoints"]
        if keep is None or keep > 0:
            save_torch(ck, folder / f"epoch_{epoch:04d}.pt")
        if keep is not None:
            for old in folder.glob("epoch_*.pt"):
                if int(old.stem.split("_")[1]) <= epoch - keep:
                    old.unlink()
        save_torch(ck, folder / "last.pt")

    def write_outputs(self) -> None:
        """model.pt (the selected epoch's weights + provenance) and metrics.csv, written atomically, last."""
        final = self.checkpoint(self.epochs - 1)
        best = self.method.select_epoch(self.history)
        if best != self.epochs - 1:
            chosen = load_checkpoint(self.out / "checkpoints" / "best.pt")
            if (chosen["epoch"], chosen["run_hash"]) != (best, self.hash):
                raise RuntimeError(
                    f"{self.out / 'checkpoints' / 'best.pt'} holds epoch {chosen['epoch']} of run {chosen['run_hash']}, "
                    f"not the selected epoch {best} of run {self.hash}"
                )
            final["models"] = chosen["models"]
        final["selected_epoch"] = best
        for key in ("optimizer", "scheduler", "rng"):
            final.pop(key)
        write_text(self.out / "metrics.csv", metrics_csv(self.history))
        save_torch(final, self.out / "model.pt")


def metrics_csv(history: list[dict]) -> str:
    """One row per epoch, columns epoch, lr, then the metric names in sorted order; floats to 6 digits."""
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


__all__ = ["Engine", "channels_last_3d", "metrics_csv"]
