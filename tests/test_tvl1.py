"""Tests of the PyTorch TV-L1 (cocon.preprocess.tvl1) on the CPU: known sub-pixel displacements recovered,
agreement with OpenCV's DualTVL1OpticalFlow on natural and synthetic frames, the median filter equal to
cv2.medianBlur, batch- and schedule-independence of every pair's result, and the config checks.
The flow stage with the torch backend is tested in test_flow.py (same shard format as opencv)."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from cocon.config import ConfigError, load_config
from cocon.preprocess import tvl1
from cocon.preprocess.flow import FlowComputer, make_tvl1, tvl1_backend

from tvl1_pairs import DEFAULT, epe, moved_pair, natural_gray, smooth_texture, translation

FAST = {**DEFAULT, "scales": 3, "warps": 2, "inner_iterations": 10, "outer_iterations": 3}


def opencv_flow(params: dict, i0: np.ndarray, i1: np.ndarray) -> np.ndarray:
    algo = make_tvl1(params)
    return np.stack([algo.calc(a, b, None) for a, b in zip(i0, i1)])


@pytest.fixture(autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ building blocks


@pytest.mark.parametrize("k", [3, 5])
def test_median_filter_equals_opencv(k):
    x = torch.from_numpy(np.random.default_rng(k).normal(size=(3, 23, 17)).astype(np.float32))
    x[1, 5:9, 2:6] = 0.5  # ties
    ref = np.stack([cv2.medianBlur(a, k) for a in x.numpy()])
    np.testing.assert_array_equal(tvl1._median(x, k).numpy(), ref)


def test_selection_network_is_a_median_for_any_input():
    """The pruned network selects the exact middle value (checked against sorting, ties included)."""
    rng = np.random.default_rng(0)
    for k in (3, 5):
        for data in (rng.normal(size=(200, k * k)), rng.integers(0, 3, size=(200, k * k)).astype(float)):
            wires = [torch.from_numpy(data[:, i]) for i in range(k * k)]
            wires += [None] * ((1 << (k * k - 1).bit_length()) - k * k)
            for kind, i, j, keep_min, keep_max in tvl1._MEDIAN_NETWORKS[k]:
                if kind == "move":
                    wires[i], wires[j] = wires[j], None
                else:
                    a, b = wires[i], wires[j]
                    wires[i], wires[j] = (
                        (torch.minimum(a, b) if keep_min else None),
                        (torch.maximum(a, b) if keep_max else None),
                    )
            np.testing.assert_array_equal(wires[k * k // 2].numpy(), np.median(data, axis=1))


def test_resize_matches_opencv_bilinear():
    """The pyramid's resize (scale factor rule) and the flow's upsampling (size rule) equal cv2.resize."""
    img = smooth_texture(48, 64, 0, 1.0)
    t = torch.from_numpy(img)[None, None]
    down = tvl1._resize(t, (38, 51), (0.8, 0.8))[0, 0].numpy()
    np.testing.assert_allclose(down, cv2.resize(img, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR), atol=2e-3)
    up = tvl1._resize(t, (61, 83))[0, 0].numpy()
    np.testing.assert_allclose(up, cv2.resize(img, (83, 61), interpolation=cv2.INTER_LINEAR), atol=2e-3)


def test_divergence_is_the_negative_adjoint_of_the_forward_gradient():
    rng = np.random.default_rng(1)
    u, px, py = (torch.from_numpy(rng.normal(size=(2, 9, 7))) for _ in range(3))
    gx, gy = tvl1._forward_gradient(u)
    px, py = px * (gx != 0), py * (gy != 0)  # dual fields live where the gradient is defined
    lhs = (gx * px + gy * py).sum()
    rhs = -(u * tvl1._divergence(px, py)).sum()
    assert torch.allclose(lhs, rhs)


# ------------------------------------------------------------------ accuracy


def test_known_subpixel_translations_are_recovered():
    """Smooth textures moved by sub-pixel amounts: default parameters, one batch; the interior of every
    pair within 0.05 px of the truth (OpenCV's error on the same pairs is the same to 1e-3 px)."""
    shifts = [(1.3, -0.6), (-2.4, 1.7), (0.4, 0.25)]
    pairs = [
        moved_pair(smooth_texture(80, 96, s, sigma), translation(*d), (64, 48))
        for s, (d, sigma) in enumerate(zip(shifts, (2.0, 3.0, 1.5)))
    ]
    i0, i1, true = (np.stack(x) for x in zip(*pairs))
    got = tvl1.TVL1(DEFAULT)(i0, i1).numpy()
    ref = opencv_flow(DEFAULT, i0, i1)
    for k, d in enumerate(shifts):
        np.testing.assert_allclose(true[k, 0, 0], d, atol=1e-5)
        assert epe(got[k], true[k], margin=6) < 0.05, (d, epe(got[k], true[k], margin=6))
        assert abs(epe(got[k], true[k], 6) - epe(ref[k], true[k], 6)) < 1e-3
        assert epe(got[k], ref[k]) < 0.05


def test_agrees_with_opencv_on_natural_frames():
    """Two photographs under a rotation + zoom + translation, default parameters, 128x96 crops: the mean
    end-point error between the two implementations is far below the 0.5 px target."""
    motions = [cv2.getRotationMatrix2D((160, 107), 2.0, 1.02), cv2.getRotationMatrix2D((160, 107), -1.0, 0.98)]
    motions[0][:, 2] += (3.2, 2.1)
    motions[1][:, 2] += (-2.3, 1.1)
    pairs = [moved_pair(natural_gray(k), m, (128, 96)) for k, m in enumerate(motions)]
    i0, i1, true = (np.stack(x) for x in zip(*pairs))
    got = tvl1.TVL1(DEFAULT)(i0, i1).numpy()
    ref = opencv_flow(DEFAULT, i0, i1)
    for k in range(2):
        assert epe(got[k], ref[k]) < 0.1, epe(got[k], ref[k])
        assert epe(got[k], true[k], margin=8) < 0.5  # both solve the problem ...
        assert abs(epe(got[k], true[k], 8) - epe(ref[k], true[k], 8)) < 0.05  # ... equally well


# ------------------------------------------------------------------ batching


def test_batch_and_check_interval_do_not_change_a_pair():
    """Each pair's flow is the same bit for bit alone, in a batch of different pairs that converge at
    different iterations, and with convergence looked at every iteration or every 4."""
    pairs = [moved_pair(smooth_texture(60, 70, s, 2.0), translation(0.7 * s - 1, 0.5), (48, 36)) for s in range(3)]
    i0, i1, _ = (np.stack(x) for x in zip(*pairs))
    i1[2] = i0[2]  # a still pair converges at once
    batch = tvl1.TVL1(FAST)(i0, i1)
    for k in range(3):
        assert torch.equal(tvl1.TVL1(FAST)(i0[k : k + 1], i1[k : k + 1])[0], batch[k])
    assert torch.equal(tvl1.TVL1(FAST, check_every=4)(i0, i1), batch)
    assert batch[2].abs().max() < 1e-3 and batch[0].abs().mean() > 0.3


@pytest.mark.slow
def test_compiled_path_traces_and_gives_the_eager_result(caplog):
    """The CUDA path's torch.compile wiring, traced by dynamo with the 'eager' backend (no code
    generation, so the same arithmetic): the same flow bit for bit, also when the batch shrinks as pairs
    converge (dynamic shapes). A backend that fails falls back to eager mode with a warning."""
    pairs = [moved_pair(smooth_texture(50, 60, s, 2.0), translation(0.5 * s, -0.3), (40, 30)) for s in range(3)]
    i0, i1, _ = (np.stack(x) for x in zip(*pairs))
    want = tvl1.TVL1(FAST)(i0, i1)
    assert torch.equal(tvl1.TVL1(FAST, compile="eager", check_every=3)(i0, i1), want)
    with caplog.at_level("WARNING", logger="cocon"):
        assert torch.equal(tvl1.TVL1(FAST, compile="no-such-backend")(i0, i1), want)
    assert "torch.compile of tvl1_iteration failed" in caplog.text


@pytest.mark.skipif(
    not os.environ.get("COCON_COMPILE_TEST_TIMEOUT"),
    reason="opt-in: inductor's C++ "
    "compile of the iteration and the median takes minutes on a 2-core VM; set COCON_COMPILE_TEST_TIMEOUT",
)
def test_inductor_compiled_flow_matches_eager():
    pairs = [moved_pair(smooth_texture(50, 60, s, 2.0), translation(0.5 * s, -0.3), (40, 30)) for s in range(2)]
    i0, i1, _ = (np.stack(x) for x in zip(*pairs))
    got = tvl1.TVL1(FAST, compile=True)(i0, i1).numpy()
    assert epe(got, tvl1.TVL1(FAST)(i0, i1).numpy()) < 0.01


def test_rejects_what_it_does_not_implement():
    with pytest.raises(ValueError, match="gamma"):
        tvl1.TVL1({**DEFAULT, "gamma": 0.1})
    with pytest.raises(ValueError, match="too small"):
        tvl1.TVL1(DEFAULT)(np.zeros((1, 2, 9), np.uint8), np.zeros((1, 2, 9), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        tvl1.TVL1(DEFAULT)(np.zeros((1, 8, 9), np.uint8), np.zeros((2, 8, 9), np.uint8))


def test_frames_too_small_fail_the_video_not_the_job():
    """In the flow stage a video too small for TV-L1 is a BadVideo (listed as failed, the rest of the
    shard goes on), not an exception that kills the job."""
    from cocon.preprocess.flow import video_flow
    from cocon.preprocess.video import BadVideo

    c = FlowComputer("tvl1", {"tvl1": {**DEFAULT, "backend": "torch", "device": "cpu"}})
    with pytest.raises(BadVideo, match="too small"):
        video_flow(np.zeros((3, 2, 9, 3), np.uint8), c, 20.0, map)


def test_tiny_images_use_fewer_scales_like_opencv():
    """Below 16 px a level is not added (as OpenCV); a 20x18 pair still gives OpenCV's flow."""
    i0, i1, _ = moved_pair(smooth_texture(40, 40, 3, 1.5), translation(0.6, -0.4), (20, 18))
    got = tvl1.TVL1(DEFAULT)(i0[None], i1[None]).numpy()[0]
    assert epe(got, opencv_flow(DEFAULT, i0[None], i1[None])[0]) < 0.02


# ------------------------------------------------------------------ config and backend choice


def test_backend_resolution_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert tvl1_backend({**DEFAULT, "backend": "auto"}) == ("opencv", "cpu")
    assert tvl1_backend({**DEFAULT, "backend": "torch"}) == ("torch", "cpu")
    assert tvl1_backend({**DEFAULT, "backend": "opencv", "device": "cuda"}) == ("opencv", "cpu")
    c = FlowComputer("tvl1", {"tvl1": {**DEFAULT, "backend": "torch", "batch_size": 7}})
    assert (c.batched, c.batch_size, c.device) == (True, 7, "cpu")
    assert not FlowComputer("tvl1", {"tvl1": DEFAULT}).batched


def test_an_opencv_flow_job_does_not_start_torch():
    """OpenCV flow (TVL1 on the CPU, Farneback) never imports torch (~1.5 s and ~200 MB per job), also with
    backend auto when CUDA_VISIBLE_DEVICES hides every GPU (`cocon gpus 0`); the torch backend does."""
    code = (
        "import sys; from cocon.preprocess.flow import FlowComputer; from cocon.config import load_config; "
        "p = load_config()['flow']; p['tvl1']['backend'] = sys.argv[1]; "
        "c = FlowComputer('tvl1', p); FlowComputer('farneback', p); print(c.backend, 'torch' in sys.modules)"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    for backend, expected in (("opencv", "opencv False"), ("auto", "opencv False"), ("torch", "torch True")):
        proc = subprocess.run([sys.executable, "-c", code, backend], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == expected.split(), backend


@pytest.mark.parametrize(
    "tvl1_cfg, key",
    [
        ({"backend": "torch", "gamma": 0.2}, "flow.tvl1.gamma"),
        ({"backend": "gpu"}, "flow.tvl1.backend"),
        ({"device": "cuda0"}, "flow.tvl1.device"),
        ({"batch_size": 0}, "flow.tvl1.batch_size"),
        ({"median_filtering": 7}, "flow.tvl1.median_filtering"),
    ],
)
def test_bad_backend_config_is_rejected_naming_the_key(tvl1_cfg, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides={"flow": {"tvl1": tvl1_cfg}})
