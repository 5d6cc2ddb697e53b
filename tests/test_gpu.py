"""The GPU test tier (`pytest -m gpu`; `bench/gpu_check.py` runs it with the GPU benchmarks): the pipeline's
CUDA paths against their CPU results, each with a stated tolerance, and the demo DAG with GPU jobs.
Every test is skipped, with the reason, where torch sees no CUDA device.

  TVL1 (torch backend) on CUDA, compiled and eager = the CPU result
  a training step on CUDA: fp32 = CPU fp32, bf16 autocast = fp32
  exact resume on CUDA: an interrupted run = an uninterrupted one
  SyncBatchNorm + DDP over two processes on CUDA = one process with the whole batch
  seg and pose inference on CUDA = on the CPU
  the tiny demo DAG through Snakemake's `gpu` resource: every GPU job ran on CUDA
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from cocon.models.build import PerViewNetworks
from cocon.models.losses import cocon_loss
from cocon.models.networks import DPC
from cocon.train import distributed as D
from cocon.train.checkpoints import load_checkpoint

from training_data import (  # noqa: F401  (tiny_shards_dir: the shards_dir fixture)
    ddp_batch,
    ddp_model,
    free_port,
    gradients,
    method_engine,
    tiny_config,
    tiny_shards_dir,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs CUDA: torch sees no CUDA device (the GPU tier "
        "runs on a GPU machine: `make gpu-check`, BENCHMARKS.md)",
    ),
]
OPENMMLAB = all(importlib.util.find_spec(m) is not None for m in ("mmcv", "mmengine", "mmpose", "mmseg"))
NO_OPENMMLAB = "the OpenMMLab stack (mmcv, mmengine, mmpose, mmseg) is not installed (docs/pose_seg.md, Install)"


@pytest.fixture
def no_tf32():
    """fp32 convolutions and matrix products in full fp32 on CUDA (TF32, torch's default for cuDNN
    convolutions, rounds their inputs to 10 mantissa bits), so CUDA and CPU compare at fp32 tolerances."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


# ------------------------------------------------------------------ (a) TVL1


def test_tvl1_on_cuda_equals_the_cpu_result(caplog):
    """The torch TV-L1 on CUDA, compiled (the flow stage's CUDA path) and eager, against the CPU result on
    the same pairs with the default parameters (5 scales, 5 warps, 10 x 30 iterations, median 5): three
    smooth textures under known sub-pixel translations (64x48) and two photographs under rotation + zoom +
    translation (128x96). Tolerance, per pair: mean end-point error CUDA vs CPU <= 0.02 px (25x below the
    0.5 px goal of agreement with OpenCV; float rounding and fused multiply-adds can move a convergence test
    by an iteration) and <= 1 % of the pixels more than 0.5 px apart; on CUDA the textures are still within
    0.05 px of the true motion. The compiled solver must not have fallen back to eager mode."""
    from cocon.preprocess import tvl1

    from tvl1_pairs import DEFAULT, epe, moved_pair, natural_gray, smooth_texture, translation

    shifts = [(1.3, -0.6), (-2.4, 1.7), (0.4, 0.25)]
    textures = [
        moved_pair(smooth_texture(80, 96, s, sigma), translation(*d), (64, 48))
        for s, (d, sigma) in enumerate(zip(shifts, (2.0, 3.0, 1.5)))
    ]
    motions = [cv2.getRotationMatrix2D((160, 107), 2.0, 1.02), cv2.getRotationMatrix2D((160, 107), -1.0, 0.98)]
    motions[0][:, 2] += (3.2, 2.1)
    motions[1][:, 2] += (-2.3, 1.1)
    photos = [moved_pair(natural_gray(k), m, (128, 96)) for k, m in enumerate(motions)]
    solvers = {"compiled": tvl1.TVL1(DEFAULT, "cuda", compile=True), "eager": tvl1.TVL1(DEFAULT, "cuda")}
    with caplog.at_level("WARNING", logger="cocon"):
        for name, pairs in (("textures", textures), ("photos", photos)):
            i0, i1, true = (np.stack(x) for x in zip(*pairs))
            cpu = tvl1.TVL1(DEFAULT, "cpu")(i0, i1).numpy()
            for how, solver in solvers.items():
                got = solver(i0, i1).numpy()
                for k in range(len(pairs)):
                    d, far = epe(got[k], cpu[k]), float((np.linalg.norm(got[k] - cpu[k], axis=-1) > 0.5).mean())
                    assert d <= 0.02 and far <= 0.01, f"{name} pair {k}, {how}: EPE {d:.4f} px, {far:.2%} > 0.5 px"
                    if name == "textures":
                        assert epe(got[k], true[k], margin=6) < 0.05, (how, k, epe(got[k], true[k], margin=6))
    assert "torch.compile of" not in caplog.text, caplog.text  # the compiled path really was compiled


# ------------------------------------------------------------------ (b) training step, fp32 and bf16


def _step(device: str, bf16: bool, size: int = 64, batch: int = 4, steps: int = 2) -> tuple[list[float], torch.Tensor]:
    """What Engine._step does, on a fixed random batch from fixed initial weights (both seed 0; GRU dropout
    0, whose random masks differ between devices): forward under autocast(bf16) when asked, outputs cast
    to fp32, L_cocon, backward, Adam step. Returns the losses before each of the `steps` updates and the
    first gradient, flattened, on the CPU."""
    torch.manual_seed(0)
    models = PerViewNetworks(
        {
            "rgb": DPC(3, num_blocks=4, pred_steps=2, dropout=0.0),
            "flow_tvl1": DPC(2, num_blocks=4, pred_steps=2, dropout=0.0),
        }
    ).to(device)
    g = torch.Generator().manual_seed(0)
    x = {
        "rgb": torch.randn(batch, 4, 3, 2, size, size, generator=g).to(device),
        "flow_tvl1": torch.randn(batch, 4, 2, 2, size, size, generator=g).to(device),
    }
    opt = torch.optim.Adam(models.parameters(), lr=1e-3, weight_decay=1e-5)
    losses, grad = [], None
    for _ in range(steps):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            outputs = models(x)
        outputs = {v: type(o)(*(t.float() for t in o)) for v, o in outputs.items()}
        total = cocon_loss(outputs, lam=10.0, alpha=1.0)["total"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        if grad is None:
            grad = torch.cat([p.grad.flatten() for p in models.parameters() if p.grad is not None]).float().cpu()
        opt.step()
        losses.append(float(total.detach()))
    return losses, grad


def test_training_step_on_cuda_fp32_and_bf16_give_equal_losses(no_tf32):
    """Two CoCon training steps (two views, 64 px, batch 4). fp32 on CUDA (TF32 off) = fp32 on the CPU:
    the losses before the first and the second update within 1e-3 relative (the bench's fp32 tolerance:
    summation order only), the first gradients' cosine >= 0.99. bf16 autocast on CUDA (the CUDA default,
    train.precision auto) = fp32 on CUDA: the losses within 5e-2 relative (bench/train_step.py's bf16
    tolerance: features rounded to 8 mantissa bits before the logits are divided by tau = 0.005; 0.3-1.5 %
    measured on the CPU), the gradients' cosine >= 0.8 (0.94-0.95 measured on the CPU)."""
    cpu, g_cpu = _step("cpu", bf16=False)
    fp32, g_fp32 = _step("cuda", bf16=False)
    bf16, g_bf16 = _step("cuda", bf16=True)
    assert all(np.isfinite(cpu + fp32 + bf16)), (cpu, fp32, bf16)
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))  # noqa: E731
    assert max(rel(a, b) for a, b in zip(fp32, cpu)) <= 1e-3, (fp32, cpu)
    assert cos(g_fp32, g_cpu) >= 0.99
    assert max(rel(a, b) for a, b in zip(bf16, fp32)) <= 5e-2, (bf16, fp32)
    assert cos(g_bf16, g_fp32) >= 0.8


# ------------------------------------------------------------------ (c) exact resume on CUDA


@pytest.fixture
def deterministic_cudnn():
    """cuDNN's deterministic convolution algorithms, no autotuning."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _relative_difference(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over every floating-point tensor of two state_dicts; integer tensors must be equal."""
    num = den = 0.0
    for k, t in b.items():
        if t.is_floating_point():
            num += float((a[k].double().cpu() - t.double().cpu()).square().sum())
            den += float(t.double().square().sum())
        else:
            assert torch.equal(a[k].cpu(), t.cpu()), k
    return (num / max(den, 1e-30)) ** 0.5


def test_resume_on_cuda_equals_an_uninterrupted_run(shards_dir, tmp_path, no_tf32, deterministic_cudnn):
    """tests/test_train.py::test_resume_equals_an_uninterrupted_run on CUDA (fp32): two CoCon epochs in one
    go, and one epoch, stopped, then resumed for the second. The checkpoint carries the CUDA random state
    (GRU dropout draws on the GPU), the optimiser and the scheduler. CUDA is not bit-reproducible here even
    with cuDNN's deterministic algorithms (MaxPool3d's backward adds with atomics), so: every loss of the
    history within 1e-3 relative, the weights (and BatchNorm statistics) within 1e-3 relative L2 per view,
    integer buffers equal; the accuracies (argmax counts over a few clips) are not compared. A resume that
    lost the random state, the Adam moments or the learning rate moves the second epoch by far more."""
    views = ["flow_tvl1", "rgb"]
    cfg = tiny_config(shards_dir, runtime={"device": "cuda"}, train={"precision": "fp32"})
    straight = method_engine("cocon", views, cfg, tmp_path / "straight", {})
    straight.fit()
    assert straight.device.type == "cuda"
    method_engine(
        "cocon",
        views,
        tiny_config(shards_dir, runtime={"device": "cuda"}, train={"precision": "fp32"}, cocon={"epochs": 1}),
        tmp_path / "resumed",
        {},
    ).fit()
    resumed = method_engine("cocon", views, cfg, tmp_path / "resumed", {})
    resumed.fit()
    assert resumed.start_epoch == 1  # it really resumed after the first epoch

    a, b = load_checkpoint(tmp_path / "straight" / "model.pt"), load_checkpoint(tmp_path / "resumed" / "model.pt")
    assert len(a["history"]) == len(b["history"]) == 2
    for ra, rb in zip(a["history"], b["history"]):
        assert ra.keys() == rb.keys() and ra["epoch"] == rb["epoch"] and ra["lr"] == pytest.approx(rb["lr"], rel=1e-12)
        for k in ra:
            if k not in ("epoch", "lr") and "top" not in k:
                assert rel(rb[k], ra[k]) <= 1e-3, (ra["epoch"], k, ra[k], rb[k])
    for v in views:
        assert _relative_difference(b["models"][v], a["models"][v]) <= 1e-3, v


# ------------------------------------------------------------------ (d) SyncBatchNorm + DDP


def _cuda_ddp_worker(rank: int, port: int, backend: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    torch.backends.cudnn.allow_tf32 = False
    if backend == "nccl":
        device = D.setup("cuda")  # cuda:<rank>, NCCL: what a training job on 2 GPUs does
    else:
        import torch.distributed as dist

        device = torch.device("cuda:0")
        torch.cuda.set_device(device)
        dist.init_process_group("gloo")
    model = D.convert_batchnorm(ddp_model(), device).to(device)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    x = {k: v[2 * rank : 2 * rank + 2].to(device) for k, v in ddp_batch().items()}
    terms = cocon_loss(net(x), lam=10.0, alpha=1.0)
    terms["total"].backward()
    total = D.reduce_mean(float(terms["total"].detach()), device)  # a collective: every rank calls it
    if rank == 0:
        torch.save({"grads": {k: g.cpu() for k, g in gradients(model).items()}, "total": total}, out)
    D.teardown()


def test_syncbn_ddp_two_processes_on_cuda_give_the_gradients_of_one_process(tmp_path):
    """tests/test_train.py's DDP test on CUDA, float64: two processes with half the batch each, torch's
    SyncBatchNorm (what cocon.train.distributed.convert_batchnorm gives on CUDA) and DDP, against one
    process with the whole batch and plain BatchNorm. With 2 GPUs: NCCL, one GPU per process (a 2-GPU
    training job). With one GPU, the strongest check it allows: both processes on that GPU over gloo, which
    carries CUDA tensors (NCCL refuses two ranks on one device) - SyncBatchNorm's CUDA kernels, the
    loss's global all_gather and DDP's gradient all-reduce on CUDA tensors, but no NCCL. Tolerance: the
    total loss within 1e-5 relative, each parameter's gradient within 1e-3 relative L2. Unlike the CPU
    test, the two sides cannot sum in the same order (cuDNN picks other algorithms for 2 clips than for
    4), and this loss is ill-conditioned: on the CPU, in float64, merely 2 threads instead of 1 move the
    loss by 2e-7 and a tensor's gradient by up to 8e-6 relative L2, while BatchNorm statistics and
    negatives that did not span both processes move them by 3e-2 and by more than 1."""
    backend = "nccl" if torch.cuda.device_count() >= 2 and torch.distributed.is_nccl_available() else "gloo"
    single = ddp_model().to("cuda")
    terms = cocon_loss(single({k: v.to("cuda") for k, v in ddp_batch().items()}), lam=10.0, alpha=1.0)
    terms["total"].backward()
    out = tmp_path / "ddp.pt"
    mp.spawn(_cuda_ddp_worker, args=(free_port(), backend, str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    assert got["total"] == pytest.approx(float(terms["total"].detach()), rel=1e-5), backend
    want = {k: g.cpu() for k, g in gradients(single).items()}
    assert got["grads"].keys() == want.keys()
    worst = max((float((got["grads"][k] - g).norm() / g.norm().clamp_min(1e-300)), k) for k, g in want.items())
    assert worst[0] <= 1e-3, (backend, worst)


# ------------------------------------------------------------------ (e) seg and pose on CUDA


def _rgb_frames(n: int = 6) -> np.ndarray:
    """n RGB frames (n, 48, 64, 3) uint8 of a texture moving by (2, 1) px per frame."""
    from conftest import translated_frames

    return np.ascontiguousarray(translated_frames(64, 48, n, (2, 1), seed=1)[..., ::-1])


@pytest.mark.skipif(not OPENMMLAB, reason=NO_OPENMMLAB)
def test_seg_on_cuda_equals_the_cpu_result(no_tf32):
    """SegFormer-B0 (the package's config, random weights with the classifier amplified and the person
    logit shifted so that the maps span the probability range, as tests/test_pose_seg.py does), the same
    weights on the CPU and on CUDA: person probabilities within 2e-3, stored uint8 maps within 1 level."""
    from cocon.preprocess import seg

    from mm_models import balance_person, seg_params

    frames = _rgb_frames()
    cpu = seg.PersonProbability(seg_params(), "cpu", 0)
    balance_person(cpu, frames, 40.0)
    gpu = seg.PersonProbability(seg_params(device="cuda"), "cuda", 0)
    gpu.model.load_state_dict(cpu.model.state_dict())
    assert next(gpu.model.parameters()).is_cuda
    pc, pg = torch.stack(cpu.probabilities(frames)), torch.stack(gpu.probabilities(frames))
    assert pc.shape == pg.shape and float(pc.std()) > 0.1  # the maps vary: the comparison means something
    assert float((pc - pg).abs().max()) <= 2e-3
    assert np.abs(cpu(frames).astype(int) - gpu(frames).astype(int)).max() <= 1


@pytest.mark.skipif(not OPENMMLAB, reason=NO_OPENMMLAB)
def test_pose_on_cuda_equals_the_cpu_result(no_tf32):
    """MobileNetV2 top-down heatmaps (the package's config, random weights with the last layer x 40 as
    tests/test_pose_seg.py does), one box per frame, the same weights on the CPU and on CUDA: raw heatmaps
    within 1e-3 of their largest magnitude, the stored uint8 maps within 1 level."""
    from cocon.preprocess import pose

    from mm_models import pose_params

    frames = _rgb_frames()
    cpu = pose.PoseHeatmaps(pose_params(), "cpu", 0)
    state = {k: v * 40 if k.startswith("head.final_layer") else v for k, v in cpu.model.state_dict().items()}
    cpu.model.load_state_dict(state)
    gpu = pose.PoseHeatmaps(pose_params(device="cuda"), "cuda", 0)
    gpu.model.load_state_dict(state)
    assert next(gpu.model.parameters()).is_cuda
    items = [(np.ascontiguousarray(f[:, :, ::-1]), np.array([0, 0, 64, 48], np.float32)) for f in frames]
    hc = np.stack([h for h, _ in cpu._instances(items)])
    hg = np.stack([h for h, _ in gpu._instances(items)])
    assert np.abs(hc - hg).max() <= 1e-3 * np.abs(hc).max()
    boxes = [np.array([[0, 0, 64, 48, 1.0]], np.float32)] * len(frames)
    ref = cpu(frames, boxes).astype(int)
    assert ref.max() > 100 and np.abs(gpu(frames, boxes).astype(int) - ref).max() <= 1


# ------------------------------------------------------------------ (f) the demo DAG with GPU jobs


@pytest.fixture(scope="module")
def gpu_dag(tmp_path_factory):
    """tests/workflow_runs.py's TINY demo, one shard, run by Snakemake with `--resources gpu=1`: TVL1 on the
    torch backend (flow.tvl1.backend torch, device cuda), CPC, CoCon, fine-tuning (CoCon init), the dense
    test and the features on CUDA (runtime.gpus 1, runtime.device cuda), seg and pose on CUDA (gpus 1) when the
    OpenMMLab stack is installed. Every GPU job runs under `cocon gpus 1` (its own GPU claim; the locks in
    this test's folder). Returns (workdir, whether pose and seg ran)."""
    from workflow_runs import TINY, snakemake

    work = tmp_path_factory.mktemp("gpu_dag")
    cfg = {
        **TINY,
        "shards": {"videos_per_shard": 8},
        "flow": {"methods": ["tvl1"], "tvl1": {**TINY["flow"]["tvl1"], "backend": "torch", "device": "cuda"}},
        "runtime": {**TINY["runtime"], "gpus": 1, "device": "cuda"},
        "finetune": {**TINY["finetune"], "inits": ["cocon"]},
    }
    if OPENMMLAB:
        cfg["seg"] = {
            "enabled": True,
            "config": "segformer_mit-b0_8xb2-160k_ade20k-512x512",
            "checkpoint": None,
            "input_scale": [64, 64],
            "short_side": 32,
            "device": "cuda",
            "gpus": 1,
        }
        cfg["pose"] = {
            "enabled": True,
            "config": "td-hm_mobilenetv2_8xb64-210e_coco-256x192",
            "checkpoint": None,
            "input_size": [48, 64],
            "boxes": "frame",
            "short_side": 32,
            "device": "cuda",
            "gpus": 1,
        }
    cores = str(max(2, min(8, os.cpu_count() or 2)))
    with pytest.MonkeyPatch.context() as mp_env:
        mp_env.setenv("COCON_GPU_LOCK_DIR", str(work / "gpu-locks"))
        snakemake(work, cfg, "--cores", cores, "--resources", "gpu=1")
    return work, OPENMMLAB


def _claimed_a_gpu(log: Path) -> bool:
    from cocon.workflow.gpus import machine_gpu_ids

    return not machine_gpu_ids() or "this job uses GPU(s)" in log.read_text(errors="replace")


def test_demo_dag_runs_its_gpu_jobs_on_cuda(gpu_dag):
    """TVL1 ran on the torch backend on CUDA (shard attributes, job log); CPC, CoCon and fine-tuning logged
    `<method> on cuda:0`; every GPU job claimed a GPU through `cocon gpus`; the report was written."""
    from cocon.data.shards import ShardReader

    work, _ = gpu_dag
    res, logs = work / "results", work / "logs"
    flow = ShardReader(res / "shards" / "flow_tvl1" / "00000.h5")
    assert (flow.attrs["tvl1_backend"], flow.attrs["tvl1_device"]) == ("torch", "cuda")
    assert len(flow.ok_rows()) == 8
    assert "tvl1 backend: torch on cuda" in (logs / "flow_tvl1" / "00000.log").read_text()
    for name, method in [
        ("train/cpc_rgb", "cpc"),
        ("train/cpc_flow_tvl1", "cpc"),
        ("train/cocon", "cocon"),
        ("finetune/cocon_rgb", "finetune"),
        ("finetune/cocon_flow_tvl1", "finetune"),
    ]:
        text = (logs / f"{name}.log").read_text(errors="replace")
        assert f"{method} on cuda" in text, f"{name}.log:\n{text[-2000:]}"
    gpu_logs = [
        logs / "flow_tvl1" / "00000.log",
        *logs.glob("train/*.log"),
        *logs.glob("finetune/*.log"),
        *logs.glob("eval/*.log"),
        *logs.glob("features/*.log"),
    ]
    expected = {"00000.log", "cpc_rgb.log", "cpc_flow_tvl1.log", "cocon.log", "cocon_rgb.log", "cocon_flow_tvl1.log"}
    assert expected <= {p.name for p in gpu_logs} and len(gpu_logs) >= 10  # + the dense tests and features
    assert all(_claimed_a_gpu(p) for p in gpu_logs), [str(p) for p in gpu_logs if not _claimed_a_gpu(p)]
    assert (res / "reports" / "metrics.json").exists() and (res / "eval" / "cocon" / "rgb" / "scores.h5").exists()


def test_demo_dag_runs_seg_and_pose_on_cuda(gpu_dag):
    """The seg and pose jobs of the same run: their shards record device cuda, their logs a GPU claim."""
    from cocon.data.shards import ShardReader

    work, with_mm = gpu_dag
    if not with_mm:
        pytest.skip(NO_OPENMMLAB)
    for view in ("seg", "pose"):
        r = ShardReader(work / "results" / "shards" / view / "00000.h5")
        assert r.attrs["device"] == "cuda" and len(r.ok_rows()) == 8, view
        assert _claimed_a_gpu(work / "logs" / view / "00000.log"), view
