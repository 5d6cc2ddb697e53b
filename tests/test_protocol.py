"""The paper's protocol where the code used to differ from it (the fidelity issue): validation metrics
are per-clip means, DDP ranks draw their own dropout masks, DPC's original loss is reachable from the
config, the fine-tuning protocols, and test accuracy over all test videos."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from cocon.config import load_config
from cocon.data.shards import ShardWriter, encode_frames
from cocon.models.build import build_classifier, build_dpc
from cocon.models.losses import cpc_loss
from cocon.sources.records import VideoRecord
from cocon.train import checkpoints
from cocon.train.checkpoints import load_checkpoint
from cocon.train.engine import Engine, padding_weights
from cocon.train.methods import CPC, Finetune

from conftest import gloo_process, tiny_training

H, W, T = 36, 44, 16


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """12 rgb videos of 3 classes, each its own group (so holdouts have any size), 2 of them test."""
    root = tmp_path_factory.mktemp("protocol")
    rng = np.random.default_rng(1)
    enc = {"codec": "raw"}
    with ShardWriter(root / "shards" / "rgb" / "00000.h5", "rgb", "00000", {"params": {}}, enc) as w:
        for i in range(12):
            label = i % 3
            video = np.repeat(rng.integers(0, 255, (1, H, W, 3), dtype=np.uint8), T, axis=0)
            video[:, :, (4 + 6 * label) % W] = 255  # a class-dependent bright column
            rec = VideoRecord(
                f"c{label}/v{i:02d}", f"v{i}.avi", f"c{label}", label, "", {"1": "test" if i >= 10 else "train"}
            )
            if i == 11:
                w.add_failure(rec, "broken on purpose")  # a test video that cannot be scored
            else:
                w.add_video(rec, encode_frames(video, enc), {"fps": 25.0})
    return root


def config(root: Path, cpc: dict | None = None, **train) -> dict:
    t = tiny_training(
        train={"views": ["rgb"], "input_size": {"rgb": 32}, "val_fraction": 0.3, **train},
        cpc={"max_steps_per_epoch": 2, **(cpc or {})},
    )
    return load_config(
        overrides={
            "output_dir": str(root),
            **t,
            "finetune": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2, "inits": ["random", "cpc"]},
        }
    )


def test_validation_metrics_are_means_over_clips_not_over_batches(data, tmp_path, one_torch_thread):
    """3 validation clips in batches of 2 and 1: the logged val/top1 and val/total are the means over the
    3 clips (the last, partial batch used to weigh as much as a full one)."""
    cfg = config(data)
    engine = Engine(Finetune(cfg, ["rgb"]), tmp_path / "ft")
    engine.fit()
    assert len(engine.val_set) == 3
    model = build_classifier("rgb", 3, cfg)
    model.load_state_dict(load_checkpoint(tmp_path / "ft" / "checkpoints" / "last.pt")["models"]["rgb"])
    model.eval()
    engine.val_set.output = "float"  # the same clips, finished on the CPU one by one
    with torch.no_grad():
        clips = [engine.val_set[i] for i in range(3)]
        logits = torch.cat([model(c["rgb"][None]) for c in clips])
        labels = torch.stack([c["label"] for c in clips])
    row = engine.history[0]
    assert row["val/total"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert row["val/top1"] == pytest.approx(float((logits.argmax(1) == labels).double().mean()), abs=1e-9)


def test_padding_weights_leave_out_the_distributed_samplers_duplicates(monkeypatch):
    """DistributedSampler pads 5 clips to 6 for 2 ranks (rank r holds global positions r, r+2, r+4): the
    duplicate is rank 1's third clip."""
    from cocon.train import distributed as D

    monkeypatch.setattr(D, "world_size", lambda: 2)
    for rank, want in ((0, [1, 1, 1]), (1, [1, 1, 0])):
        monkeypatch.setattr(D, "rank", lambda r=rank: r)
        assert padding_weights(2, 0, 5).tolist() + padding_weights(1, 2, 5).tolist() == want


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seeds_worker(rank: int, port: int, root: str, out: str) -> None:
    gloo_process(rank, port)
    seen = []
    real = checkpoints.seed_everything

    def record(seed):
        seen.append(int(seed))
        real(seed)

    import cocon.train.engine as E

    E.seed_everything = record
    Engine(CPC(config(Path(root)), ["rgb"]), Path(out) / "run").fit()
    torch.save(torch.tensor(seen), Path(out) / f"seeds{rank}.pt")
    from cocon.train import distributed as D

    D.teardown()


@pytest.mark.slow
def test_ddp_ranks_start_alike_and_draw_their_own_dropout_masks(data, tmp_path):
    """Two gloo processes: the same seed for the initial weights (identical networks), then a different
    torch/numpy seed per rank every epoch, so GRU dropout masks differ across ranks (they used to be equal)."""
    torch.set_num_threads(1)
    mp.spawn(_seeds_worker, args=(_free_port(), str(data), str(tmp_path)), nprocs=2, join=True)
    s0, s1 = (torch.load(tmp_path / f"seeds{r}.pt").tolist() for r in (0, 1))
    assert s0[0] == s1[0] == 0  # initial weights: the config seed on every rank
    assert len(s0) == len(s1) == 2 and s0[1] != s1[1]  # epoch 0: a seed of its own per rank
    assert s0[1] == checkpoints.epoch_seed(0, 0, 0) and s1[1] == checkpoints.epoch_seed(0, 0, 1)


def test_dpc_original_loss_is_reachable_from_the_config(data):
    """cpc.variant: dpc = DPC's rollout (nothing normalised) and L_cpc on raw dot products, tau 1."""
    cfg = config(data, cpc={"variant": "dpc"})
    net = build_dpc("rgb", cfg)
    assert net.l2_norm is False
    method = CPC(cfg, ["rgb"])
    assert method.criterion.kwargs["normalize"] is False and method.criterion.kwargs["temperature"] == 1.0
    torch.manual_seed(0)
    out = net(torch.randn(2, 4, 3, 2, 32, 32))
    terms = method.criterion({"rgb": out})
    want, _ = cpc_loss(out.pred, out.target, temperature=1.0, normalize=False, distributed=False)
    assert float(terms["cpc/rgb"]) == pytest.approx(float(want), rel=1e-6)
    default = CPC(config(data), ["rgb"]).criterion.kwargs
    assert default["normalize"] is True and default["temperature"] == 0.005


def test_finetune_protocols(data):
    """fixed (default): L2-normalised z, trainable GRU, dropout 0.7; reference (Table 1): raw z, frozen GRU,
    dropout 0.5. finetune.dropout overrides either."""
    fixed = build_classifier("rgb", 3, config(data))
    assert fixed.l2_norm and fixed.dropout.p == 0.7 and all(p.requires_grad for p in fixed.gru.parameters())
    ref_cfg = config(data)
    ref_cfg["finetune"]["protocol"] = "reference"
    ref = build_classifier("rgb", 3, ref_cfg)
    assert not ref.l2_norm and ref.dropout.p == 0.5 and not any(p.requires_grad for p in ref.gru.parameters())
    ref_cfg["finetune"]["dropout"] = 0.2
    assert build_classifier("rgb", 3, ref_cfg).dropout.p == 0.2


def test_reference_protocol_keeps_the_gru_frozen_while_fine_tuning(data, tmp_path, one_torch_thread):
    cfg = config(data)
    cfg["finetune"]["protocol"] = "reference"
    engine = Engine(Finetune(cfg, ["rgb"]), tmp_path / "ref")
    engine.fit()
    ck = load_checkpoint(tmp_path / "ref" / "model.pt")["models"]["rgb"]
    torch.manual_seed(cfg["seed"])
    initial = build_classifier("rgb", 3, cfg).state_dict()
    assert all(torch.equal(ck[k], initial[k]) for k in initial if k.startswith("gru."))
    assert not torch.equal(ck["fc.weight"], initial["fc.weight"])


def test_test_accuracy_over_all_test_videos_counts_unscored_as_wrong(data, tmp_path, one_torch_thread):
    from cocon.evaluate.dense import evaluate

    cfg = config(data)
    Engine(Finetune(cfg, ["rgb"]), tmp_path / "ft").fit()
    result = evaluate(cfg, "rgb", tmp_path / "ft" / "model.pt", tmp_path / "scores.h5")
    assert (result["n_videos"], result["n_unscored"]) == (1, 1)
    assert result["accuracy_all"] == pytest.approx(result["accuracy"] / 2)


def test_test_crop_shows_objects_at_the_training_scale(data):
    """train.eval_crop train_scale (default): validation and test clips are the centred square of the
    training crops' mean side (0.862 of the short side for crop areas 0.5-1) resized to the input size;
    full: the whole short-side square (objects ~16 % smaller than training showed them)."""
    import cv2

    from cocon.data.augment import Augmentation, centre_box, train_scale
    from cocon.evaluate.common import dense_dataset
    from cocon.views import IMAGENET_MEAN, IMAGENET_STD

    assert train_scale(Augmentation()) == pytest.approx((2 / 3) * (1 - 0.5**1.5) / 0.5)  # 0.862
    assert train_scale(Augmentation(crop_scale=(0.64, 0.64))) == pytest.approx(0.8)
    for mode, fraction in (("train_scale", train_scale(Augmentation())), ("full", 1.0)):
        cfg = config(data, eval_crop=mode)
        ds = dense_dataset(cfg, "rgb", "test")
        assert ds.centre_crop == pytest.approx(fraction)
        v = ds.videos[0]
        from cocon.data.shards import ShardReader

        frames = ShardReader(data / "shards" / "rgb" / "00000.h5").read(v.row, ds.windows(0)[0][:1])
        x0, y0, s, _ = centre_box(H, W, fraction)
        want = cv2.resize(frames[0, y0 : y0 + s, x0 : x0 + s], (32, 32), interpolation=cv2.INTER_LINEAR)
        want = (want / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        got = ds[0]["rgb"][0, 0, :, 0].numpy().transpose(1, 2, 0)  # window 0, block 0, frame 0: (32, 32, 3)
        np.testing.assert_allclose(got, want, atol=2.5 / 255 / 0.224)  # within 2 uint8 levels of OpenCV's bilinear
