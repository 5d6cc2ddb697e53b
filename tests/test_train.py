"""Training stages on CPU: exact resume, DDP (2 gloo processes) = one process, checkpoint contents."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from cocon.config import load_config
from cocon.data.shards import ShardWriter, encode_frames
from cocon.models.build import PerViewNetworks
from cocon.models.losses import cocon_loss
from cocon.models.networks import DPC
from cocon.sources.records import VideoRecord
from cocon.train import distributed as D
from cocon.train.checkpoints import load_checkpoint, run_hash
from cocon.train.deadline import RESUME_EXIT_CODE, Deadline, DeadlineReached
from cocon.train.engine import Engine
from cocon.train.methods import get_method

from conftest import gloo_process, tiny_training


def Trainer(method: str, views: list[str], cfg: dict, out: Path, init: dict) -> Engine:
    """The engine running `method` (the tests' shorthand)."""
    return Engine(get_method(method)(cfg, views, init), out)


H, W, T = 36, 44, 16


def _video(rng, t=T):
    """A textured square moving with a random velocity over a textured background: (T, H, W, 3)."""
    bg = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    sq = rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)
    vx, vy = rng.integers(-2, 3, 2)
    out = np.empty((t, H, W, 3), np.uint8)
    for k in range(t):
        f = bg.copy()
        y, x = (5 + vy * k) % (H - 10), (5 + vx * k) % (W - 10)
        f[y : y + 10, x : x + 10] = sq
        out[k] = f
    return out


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory) -> Path:
    """<dir>/shards/{rgb,flow_tvl1}/00000.h5 with 10 videos (2 classes, groups, train/test roles)."""
    root = tmp_path_factory.mktemp("train_data")
    rng = np.random.default_rng(0)
    recs, vids = [], []
    for i in range(10):
        label = i % 2
        recs.append(
            VideoRecord(
                f"c{label}/v{i:02d}",
                f"v{i}.avi",
                f"c{label}",
                label,
                f"g{i // 2}",
                {"1": "test" if i >= 8 else "train"},
            )
        )
        vids.append(_video(rng))
    rgb_enc, flow_enc = {"codec": "jpeg", "quality": 90}, {"codec": "raw"}
    meta = {"fps": 25.0, "orig_height": H, "orig_width": W, "orig_frames": T}
    with ShardWriter(root / "shards" / "rgb" / "00000.h5", "rgb", "00000", {"params": {}}, rgb_enc) as w:
        for r, v in zip(recs, vids):
            w.add_video(r, encode_frames(v, rgb_enc), meta)
    with ShardWriter(root / "shards" / "flow_tvl1" / "00000.h5", "flow_tvl1", "00000", {"params": {}}, flow_enc) as w:
        for r, v in zip(recs, vids):
            flow = rng.integers(100, 156, (T, H, W, 2), dtype=np.uint8)
            w.add_video(r, encode_frames(flow, flow_enc), meta)
    return root


def tiny_config(output_dir: Path, **sections: dict) -> dict:
    """tiny_training at width 8, 2 epochs of 2 steps per stage; `sections` update it key by key."""
    base = tiny_training(train={"width": 8}, cpc={"epochs": 2, "max_steps_per_epoch": 2}, cocon={"epochs": 2})
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return load_config(overrides={"output_dir": str(output_dir), **base})


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["models"]


def test_resume_equals_an_uninterrupted_run(shards_dir, tmp_path):
    cfg = tiny_config(shards_dir)
    Trainer("cocon", ["flow_tvl1", "rgb"], cfg, tmp_path / "straight", {}).fit()

    Trainer("cocon", ["flow_tvl1", "rgb"], tiny_config(shards_dir, cocon={"epochs": 1}), tmp_path / "resumed", {}).fit()
    resumed = Trainer("cocon", ["flow_tvl1", "rgb"], cfg, tmp_path / "resumed", {})
    resumed.fit()
    assert resumed.start_epoch == 1  # it really resumed after the first epoch

    straight_ck = load_checkpoint(tmp_path / "straight" / "model.pt")
    resumed_ck = load_checkpoint(tmp_path / "resumed" / "model.pt")
    assert straight_ck["history"] == resumed_ck["history"]  # same loss sequence, epoch by epoch
    for v in ("rgb", "flow_tvl1"):
        for k, t in straight_ck["models"][v].items():
            torch.testing.assert_close(resumed_ck["models"][v][k], t, rtol=0, atol=0)
    for name in ("metrics.csv", "model.pt"):  # the files themselves, byte for byte
        assert (tmp_path / "straight" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name


def test_outputs_and_checkpoint_contents(shards_dir, tmp_path):
    cfg = tiny_config(shards_dir, cpc={"epochs": 1})
    Trainer("cpc", ["rgb"], cfg, tmp_path / "cpc", {}).fit()
    out = tmp_path / "cpc"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_seconds.json", "inputs.txt", "last.pt"]
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert {
        "models",
        "optimizer",
        "scheduler",
        "rng",
        "epoch",
        "history",
        "config",
        "code_revision",
        "library_versions",
        "run_hash",
    } <= set(last)
    final = load_checkpoint(out / "model.pt")
    assert "optimizer" not in final and set(final["models"]) == {"rgb"}
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "lr", "train/cpc/rgb", "train/top1/rgb", "val/total"} <= set(header)
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
    # stage 2 starts from the stage-1 weights of each view
    t = Trainer(
        "cocon",
        ["rgb", "flow_tvl1"],
        tiny_config(shards_dir, cocon={"epochs": 1}),
        tmp_path / "cocon",
        {"rgb": str(out / "model.pt")},
    )
    t.setup()
    for k, v in final["models"]["rgb"].items():
        torch.testing.assert_close(t.models["rgb"].state_dict()[k], v)


def test_checkpoint_of_another_config_is_set_aside_not_resumed(shards_dir, tmp_path):
    Trainer("cpc", ["rgb"], tiny_config(shards_dir, cpc={"epochs": 1}), tmp_path / "run", {}).fit()
    first = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    t = Trainer("cpc", ["rgb"], tiny_config(shards_dir, cpc={"epochs": 1, "lr": 0.01}), tmp_path / "run", {})
    t.fit()
    assert t.start_epoch == 0  # trained from scratch with the new learning rate
    assert (tmp_path / "run" / "checkpoints.previous" / "last.pt").read_bytes() == first
    assert load_checkpoint(tmp_path / "run" / "model.pt")["history"][0]["lr"] == pytest.approx(0.01)


def test_speed_only_settings_keep_the_run_and_other_sections_do_not_enter_it(shards_dir):
    """The run identity (which checkpoints may resume) holds what shapes the weights: not the runtime
    section, not the epoch count of pretraining, not stage 2's settings for a CPC run; a CPC setting
    changes it."""
    base = run_hash(get_method("cpc")(tiny_config(shards_dir), ["rgb"]).identity())
    same = [
        tiny_config(shards_dir, runtime={"gpus": 2, "workers": 3, "compile": True, "keep_checkpoints": None}),
        tiny_config(shards_dir, cpc={"epochs": 7}),
        tiny_config(shards_dir, cocon={"lam": 1.0, "epochs": 9}, finetune={"epochs": 5}),
        tiny_config(shards_dir, train={"input_size": {"rgb": 32, "flow": 48}}),  # another view's size
    ]
    for cfg in same:
        assert run_hash(get_method("cpc")(cfg, ["rgb"]).identity()) == base
    for cfg in (tiny_config(shards_dir, cpc={"lr": 0.01}), tiny_config(shards_dir, train={"stride": 2})):
        assert run_hash(get_method("cpc")(cfg, ["rgb"]).identity()) != base
    # stage 2: its own settings count; the control run (lam 0) ignores the cooperative ones
    cocon = lambda **kw: run_hash(get_method("cocon")(tiny_config(shards_dir, **kw), ["rgb", "flow_tvl1"]).identity())
    assert cocon(cocon={"lam": 1.0}) != cocon()
    assert cocon(cocon={"lam": 0.0, "alpha": 0.5}) == cocon(cocon={"lam": 0.0})


def test_a_run_stops_before_its_deadline_and_resumes_exactly(shards_dir, tmp_path):
    """Under a deadline that has passed, the run trains the first epoch (no duration known yet), then
    stops before the next with exit code 75 and last.pt written; a retry still out of time stops at once;
    a retry with time resumes and ends as an uninterrupted run, byte for byte."""
    cfg = tiny_config(shards_dir, cpc={"epochs": 3})
    Trainer("cpc", ["rgb"], cfg, tmp_path / "straight", {}).fit()
    out = tmp_path / "limited"
    for attempt in (1, 2):
        engine = Engine(get_method("cpc")(cfg, ["rgb"]), out, deadline=Deadline(time.time(), margin=0))
        with pytest.raises(DeadlineReached) as stop:
            engine.fit()
        assert stop.value.code == RESUME_EXIT_CODE == 75
        assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 0 and not (out / "model.pt").exists()
        assert ("Not one epoch fits" in stop.value.message) == (attempt == 2)
    resumed = Trainer("cpc", ["rgb"], cfg, out, {})
    resumed.fit()
    assert resumed.start_epoch == 1
    for name in ("model.pt", "metrics.csv"):
        assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


def test_deadline_comes_from_slurm_only(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert Deadline.for_job(60).end is None  # a workstation has none
    monkeypatch.setenv("SLURM_JOB_ID", "no-such-job")  # squeue cannot tell: the start plus the time limit
    assert Deadline.for_job(60, start=1000.0).end == 1000.0 + 3600.0
    d = Deadline(1000.0, now=400.0)  # 600 s left: a 5 % margin (30 s), within 10 s .. 5 min
    assert d.margin == 30.0 and d.left(now=400.0) == 570.0 and d.fits(570.0, now=400.0)
    assert not d.fits(571.0, now=400.0) and Deadline(None).fits(1e12)


# ---------------------------------------------------------------- DDP on CPU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# float64: in float32 the encoder's early-layer gradients are ill-conditioned (40 BatchNorms, per-position
# L2 normalisation, logits / 0.005), so merely summing the batch statistics in another order moves them by
# up to ~6 %; in float64 the distributed and single-process gradients agree to ~1e-12.
def _batch(seed=0, B=4):
    g = torch.Generator().manual_seed(seed)
    return {
        "rgb": torch.randn(B, 4, 3, 2, 32, 32, generator=g, dtype=torch.float64),
        "flow_tvl1": torch.randn(B, 4, 2, 2, 32, 32, generator=g, dtype=torch.float64),
    }


def _model():
    torch.manual_seed(0)
    return PerViewNetworks(
        {
            "rgb": DPC(3, num_blocks=4, pred_steps=2, dropout=0.0),
            "flow_tvl1": DPC(2, num_blocks=4, pred_steps=2, dropout=0.0),
        }
    ).double()


def _grads(model) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def _ddp_worker(rank: int, port: int, out: str) -> None:
    device = gloo_process(rank, port)
    model = D.convert_batchnorm(_model(), device)
    net = torch.nn.parallel.DistributedDataParallel(model)
    x = {k: v[2 * rank : 2 * rank + 2] for k, v in _batch().items()}
    terms = cocon_loss(net(x), lam=10.0, alpha=1.0)
    terms["total"].backward()
    total = D.reduce_mean(float(terms["total"]), device)  # a collective: every rank calls it
    if rank == 0:
        torch.save({"grads": _grads(model), "total": total}, out)
    D.teardown()


@pytest.mark.slow
def test_ddp_two_cpu_processes_give_the_gradients_of_one_process(tmp_path):
    """Negatives, cooperative losses and BatchNorm statistics all span the global batch."""
    torch.set_num_threads(1)
    single = _model()
    terms = cocon_loss(single(_batch()), lam=10.0, alpha=1.0)
    terms["total"].backward()
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    assert got["total"] == pytest.approx(float(terms["total"]), rel=1e-9)
    want = _grads(single)
    assert got["grads"].keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got["grads"][k], want[k], rtol=1e-7, atol=1e-9, msg=lambda m, k=k: f"{k}: {m}")


def test_finished_run_restarts_when_an_input_changes(shards_dir, tmp_path):
    cfg = tiny_config(shards_dir, cpc={"epochs": 1}, train={"width": 8})
    out = tmp_path / "cpc"
    Trainer("cpc", ["rgb"], cfg, out, {}).fit()
    again = Trainer("cpc", ["rgb"], cfg, out, {})
    again.resume()
    assert again.start_epoch == 1  # same inputs: resumes (here: nothing left to do)
    shard = shards_dir / "shards" / "rgb" / "00000.h5"
    st = os.stat(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the shard was rewritten
    try:
        fresh = Trainer("cpc", ["rgb"], cfg, out, {})
        fresh.resume()
        assert fresh.start_epoch == 0 and (out / "checkpoints.previous" / "last.pt").exists()
    finally:
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
