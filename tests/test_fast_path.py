"""The training fast path (runtime.channels_last, runtime.compile) on CPU: same losses and gradients as the
default path, engine runs that complete and resume, checkpoints unchanged (weights_only, same keys).

The engine tests use encoder width 8 (D = 32, train.width): the code path is the engine's own, only the
networks are small enough for a test on 2 cores."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from cocon.models.build import PerViewNetworks, build_dpc
from cocon.models.losses import cocon_loss
from cocon.models.networks import DPC
from cocon.train import distributed as D
from cocon.train.checkpoints import load_checkpoint, run_hash
from cocon.train.engine import channels_last_3d
from cocon.train.methods import CoCon

from conftest import gloo_process
from training_data import free_port, method_engine, tiny_shards_dir  # noqa: F401  (tiny_shards_dir: the shards_dir fixture)
from training_data import tiny_config as _tiny_config

VIEWS = ["flow_tvl1", "rgb"]
WIDTH = 8
# The inductor (C++) compile test runs only when this is set: the seconds allowed for it (e.g. 300).
COMPILE_TIMEOUT = float(os.environ.get("COCON_COMPILE_TEST_TIMEOUT", 0))


def tiny_config(output_dir, **sections):
    return _tiny_config(output_dir, **{**sections, "train": {"width": WIDTH, **sections.get("train", {})}})


def _tiny_models(views, cfg):
    return PerViewNetworks({v: build_dpc(v, cfg) for v in views})


@pytest.fixture
def tiny():
    """Engine runs at encoder width WIDTH (tiny_config)."""


@pytest.fixture(scope="module")
def default_run(shards_dir, tmp_path_factory):
    """The 2-epoch reference run with the default options (history of losses)."""
    t = method_engine("cocon", VIEWS, tiny_config(shards_dir), tmp_path_factory.mktemp("default"), {})
    t.fit()
    return t.history


def _assert_same_history(got, want, rel):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in w:
            assert g[k] == pytest.approx(w[k], rel=rel, abs=1e-6), k


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return PerViewNetworks(
        {
            "rgb": DPC(3, num_blocks=4, pred_steps=2, dropout=0.0, width=WIDTH),
            "flow_tvl1": DPC(2, num_blocks=4, pred_steps=2, dropout=0.0, width=WIDTH),
        }
    ).to(dtype)


def _batch(dtype=torch.float32, B=4):
    g = torch.Generator().manual_seed(0)
    return {
        "rgb": torch.randn(B, 4, 3, 2, 32, 32, generator=g, dtype=dtype),
        "flow_tvl1": torch.randn(B, 4, 2, 2, 32, 32, generator=g, dtype=dtype),
    }


def _loss_and_grads(model, x):
    loss = cocon_loss(model(x), lam=10.0, alpha=1.0)["total"]
    loss.backward()
    return loss.detach(), {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def _to_channels_last(model, x):
    for m in model.values():
        m.encoder.to(memory_format=torch.channels_last_3d)
    return {k: channels_last_3d(t) for k, t in x.items()}


def test_channels_last_3d_keeps_values_and_gives_channels_last_blocks():
    x = torch.randn(2, 4, 3, 2, 8, 8)
    y = channels_last_3d(x)
    assert y.shape == x.shape and torch.equal(y, x)
    blocks = y.reshape(8, 3, 2, 8, 8)  # what DPC.encode hands the encoder
    assert blocks.data_ptr() == y.data_ptr()  # a view, no copy
    assert blocks.is_contiguous(memory_format=torch.channels_last_3d)
    assert channels_last_3d(x[0]).is_contiguous(memory_format=torch.channels_last_3d)


def test_channels_last_gives_the_loss_and_gradients_of_the_default_layout():
    """Measured: 5e-7 on the loss and <= 1.5e-5 per parameter (relative norm) on the gradients in
    float32 (oneDNN picks other kernels, so sums run in another order); identical in float64."""
    ref_loss, ref = _loss_and_grads(_model(), _batch())
    model = _model()
    x = _to_channels_last(model, _batch())
    assert model["rgb"].encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert x["rgb"].reshape(16, 3, 2, 32, 32).is_contiguous(memory_format=torch.channels_last_3d)
    loss, got = _loss_and_grads(model, x)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    assert got.keys() == ref.keys()
    for k in ref:
        err = float((got[k] - ref[k]).norm() / ref[k].norm().clamp_min(1e-30))
        assert err <= 1e-3, f"{k}: relative gradient difference {err:.2e} > 1e-3"


def _fit(cfg, out):
    t = method_engine("cocon", VIEWS, cfg, out, {})
    t.fit()
    return t


@pytest.mark.slow
def test_trainer_with_channels_last_completes_and_resumes(shards_dir, tmp_path, tiny, default_run):
    cfg = tiny_config(shards_dir, runtime={"channels_last": True})
    straight = _fit(cfg, tmp_path / "straight")
    assert straight.models["rgb"].encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    _fit(tiny_config(shards_dir, runtime={"channels_last": True}, cocon={"epochs": 1}), tmp_path / "resumed")
    resumed = _fit(cfg, tmp_path / "resumed")
    assert resumed.start_epoch == 1
    a, b = load_checkpoint(tmp_path / "straight" / "model.pt"), load_checkpoint(tmp_path / "resumed" / "model.pt")
    assert a["history"] == b["history"]
    for v in VIEWS:
        for k, t in a["models"][v].items():
            torch.testing.assert_close(b["models"][v][k], t, rtol=0, atol=0)
    # same state_dict keys as the default layout, and the weights load into a default-layout model
    plain = _tiny_models(VIEWS, cfg)
    for v in VIEWS:
        assert list(a["models"][v]) == list(plain[v].state_dict())
        plain[v].load_state_dict(a["models"][v])
    # the losses of the default layout, up to float rounding
    _assert_same_history(a["history"], default_run, rel=1e-3)
    # speed-only options are not part of the run hash: a run may be resumed with them switched
    default = tiny_config(shards_dir)
    for switched in (cfg, tiny_config(shards_dir, runtime={"compile": True})):
        assert run_hash(CoCon(switched, VIEWS).identity()) == run_hash(CoCon(default, VIEWS).identity())


@pytest.mark.slow
def test_trainer_compile_wiring_keeps_checkpoints_and_resumes(
    shards_dir,
    tmp_path,
    tiny,
    default_run,
    monkeypatch,
    caplog,
):
    """runtime.compile with TorchDynamo's "eager" backend (graph capture without code generation, seconds
    instead of the minutes inductor's C++ build takes here): compiled in place, the log line, unchanged
    state_dict keys, checkpoints that load with weights_only=True, resume, and the losses of the
    uncompiled run."""
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cfg1 = tiny_config(shards_dir, runtime={"compile": True}, cocon={"epochs": 1})
    with caplog.at_level(logging.INFO, logger="cocon.train"):
        first = _fit(cfg1, tmp_path / "compiled")
    assert any("torch.compile" in r.getMessage() for r in caplog.records)
    assert all(m._compiled_call_impl is not None for m in first.models.values())
    resumed = _fit(tiny_config(shards_dir, runtime={"compile": True}), tmp_path / "compiled")
    assert resumed.start_epoch == 1 and len(resumed.history) == 2
    ck = load_checkpoint(tmp_path / "compiled" / "model.pt")  # weights_only=True
    plain = _tiny_models(VIEWS, cfg1)
    for v in VIEWS:
        assert list(ck["models"][v]) == list(plain[v].state_dict())  # no "_orig_mod." prefixes
        plain[v].load_state_dict(ck["models"][v])
    _assert_same_history(resumed.history, default_run, rel=1e-4)
    torch._dynamo.reset()


_INDUCTOR_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import torch
    sys.path.insert(0, sys.argv[1])
    from test_fast_path import _batch, _loss_and_grads, _model
    torch.set_num_threads(1)
    ref_loss, ref = _loss_and_grads(_model(), _batch())
    model = _model()
    for m in model.values():
        m.compile()
    t0 = time.perf_counter()
    loss, got = _loss_and_grads(model, _batch())
    err = max(float((got[k] - ref[k]).norm() / ref[k].norm().clamp_min(1e-30)) for k in ref)
    print(json.dumps({"loss": float(loss), "ref_loss": float(ref_loss), "grad_rel": err,
                      "keys": list(model.state_dict()) == list(_model().state_dict()),
                      "seconds": time.perf_counter() - t0}))
""")


def test_compile_with_inductor_gives_the_loss_and_gradients_of_eager(tmp_path):
    """The real backend (inductor, C++ kernels on CPU), in a subprocess stopped after COMPILE_TIMEOUT s.
    Opt-in: with an empty compile cache this test took 72 s on the 2-core reference VM when idle and
    99 s when busy; only with the kernels cached (under /tmp/torchinductor_<user>) did it take ~11 s."""
    if not COMPILE_TIMEOUT:
        pytest.skip(
            "inductor's first compile of a tiny DPC pair takes 72-99 s on the 2-core reference VM "
            "(measured with an empty cache; ~11 s cached), over this file's 60 s budget; run it with "
            "COCON_COMPILE_TEST_TIMEOUT=300 (the engine's wiring is tested with the 'eager' backend)"
        )
    script = tmp_path / "inductor_check.py"
    script.write_text(_INDUCTOR_SCRIPT)
    t0 = time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, str(script), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=COMPILE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the process group of this subprocess and its compile workers
        p.communicate()
        pytest.skip(
            f"torch.compile (inductor, CPU) of a width-{WIDTH} DPC pair did not finish within "
            f"COCON_COMPILE_TEST_TIMEOUT={COMPILE_TIMEOUT:.0f} s (stopped after "
            f"{time.perf_counter() - t0:.0f} s)"
        )
    assert p.returncode == 0, err[-3000:]
    r = json.loads(out.strip().splitlines()[-1])
    assert r["keys"]
    assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-5)
    assert r["grad_rel"] <= 1e-3, r


def _ddp_compiled_worker(rank: int, port: int, out: str) -> None:
    device = gloo_process(rank, port)
    model = D.convert_batchnorm(_model(), device)
    for m in model.values():  # the engine's order: compile in place, then wrap in DDP
        m.compile(backend="aot_eager")
    net = torch.nn.parallel.DistributedDataParallel(model)
    x = {k: v[2 * rank : 2 * rank + 2] for k, v in _batch().items()}
    loss = cocon_loss(net(x), lam=10.0, alpha=1.0)["total"]
    loss.backward()
    total = D.reduce_mean(float(loss.detach()), device)
    if rank == 0:
        torch.save({"grads": {k: p.grad for k, p in model.named_parameters()}, "total": total}, out)
    D.teardown()


def test_ddp_with_compiled_networks_gives_the_gradients_of_one_process(tmp_path):
    """Two gloo processes, networks compiled (AOTAutograd, no code generation) before the DDP wrapper,
    global BatchNorm: the loss and gradients of one uncompiled process holding the whole batch. Opt-in
    (10 s on 2 idle cores, 30 s on busy ones; measured: loss equal to 1e-6, gradients to 3e-5)."""
    if not COMPILE_TIMEOUT:
        pytest.skip("slow (10-30 s on 2 cores, 2 processes): run it with COCON_COMPILE_TEST_TIMEOUT=300")
    ref_loss, ref = _loss_and_grads(_model(), _batch())
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_compiled_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    assert got["total"] == pytest.approx(float(ref_loss), rel=1e-5)
    for k in ref:
        err = float((got["grads"][k] - ref[k]).norm() / ref[k].norm().clamp_min(1e-30))
        assert err <= 1e-3, f"{k}: relative gradient difference {err:.2e}"
