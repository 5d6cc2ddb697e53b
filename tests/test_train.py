"""Training stages on CPU: exact resume, DDP (2 gloo processes) = one process, checkpoint contents."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from cocon.models.losses import cocon_loss
from cocon.train import distributed as D
from cocon.train.checkpoints import load_checkpoint, run_hash
from cocon.train.deadline import RESUME_EXIT_CODE, Deadline, DeadlineReached
from cocon.train.engine import Engine
from cocon.train.methods import get_method

from conftest import gloo_process
from training_data import (  # noqa: F401  (tiny_shards_dir: the shards_dir fixture)
    ddp_batch,
    ddp_model,
    free_port,
    gradients,
    method_engine,
    tiny_config,
    tiny_shards_dir,
)


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["models"]


def test_resume_equals_an_uninterrupted_run(shards_dir, tmp_path):
    cfg = tiny_config(shards_dir)
    method_engine("cocon", ["flow_tvl1", "rgb"], cfg, tmp_path / "straight", {}).fit()

    method_engine(
        "cocon", ["flow_tvl1", "rgb"], tiny_config(shards_dir, cocon={"epochs": 1}), tmp_path / "resumed", {}
    ).fit()
    resumed = method_engine("cocon", ["flow_tvl1", "rgb"], cfg, tmp_path / "resumed", {})
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
    method_engine("cpc", ["rgb"], cfg, tmp_path / "cpc", {}).fit()
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
    t = method_engine(
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
    method_engine("cpc", ["rgb"], tiny_config(shards_dir, cpc={"epochs": 1}), tmp_path / "run", {}).fit()
    first = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    t = method_engine("cpc", ["rgb"], tiny_config(shards_dir, cpc={"epochs": 1, "lr": 0.01}), tmp_path / "run", {})
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
    method_engine("cpc", ["rgb"], cfg, tmp_path / "straight", {}).fit()
    out = tmp_path / "limited"
    for attempt in (1, 2):
        engine = Engine(get_method("cpc")(cfg, ["rgb"]), out, deadline=Deadline(time.time(), margin=0))
        with pytest.raises(DeadlineReached) as stop:
            engine.fit()
        assert stop.value.code == RESUME_EXIT_CODE == 75
        assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 0 and not (out / "model.pt").exists()
        assert ("Not one epoch fits" in stop.value.message) == (attempt == 2)
    resumed = method_engine("cpc", ["rgb"], cfg, out, {})
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


def _ddp_worker(rank: int, port: int, out: str) -> None:
    device = gloo_process(rank, port)
    model = D.convert_batchnorm(ddp_model(), device)
    net = torch.nn.parallel.DistributedDataParallel(model)
    x = {k: v[2 * rank : 2 * rank + 2] for k, v in ddp_batch().items()}
    terms = cocon_loss(net(x), lam=10.0, alpha=1.0)
    terms["total"].backward()
    total = D.reduce_mean(float(terms["total"]), device)  # a collective: every rank calls it
    if rank == 0:
        torch.save({"grads": gradients(model), "total": total}, out)
    D.teardown()


@pytest.mark.slow
def test_ddp_two_cpu_processes_give_the_gradients_of_one_process(tmp_path):
    """Negatives, cooperative losses and BatchNorm statistics all span the global batch."""
    torch.set_num_threads(1)
    single = ddp_model()
    terms = cocon_loss(single(ddp_batch()), lam=10.0, alpha=1.0)
    terms["total"].backward()
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    assert got["total"] == pytest.approx(float(terms["total"]), rel=1e-9)
    want = gradients(single)
    assert got["grads"].keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got["grads"][k], want[k], rtol=1e-7, atol=1e-9, msg=lambda m, k=k: f"{k}: {m}")


def test_finished_run_restarts_when_an_input_changes(shards_dir, tmp_path):
    cfg = tiny_config(shards_dir, cpc={"epochs": 1}, train={"width": 8})
    out = tmp_path / "cpc"
    method_engine("cpc", ["rgb"], cfg, out, {}).fit()
    again = method_engine("cpc", ["rgb"], cfg, out, {})
    again.resume()
    assert again.start_epoch == 1  # same inputs: resumes (here: nothing left to do)
    shard = shards_dir / "shards" / "rgb" / "00000.h5"
    st = os.stat(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the shard was rewritten
    try:
        fresh = method_engine("cpc", ["rgb"], cfg, out, {})
        fresh.resume()
        assert fresh.start_epoch == 0 and (out / "checkpoints.previous" / "last.pt").exists()
    finally:
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
