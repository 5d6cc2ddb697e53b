"""Fine-tuning, dense evaluation, pretrained features and the report, on the small real shards of
tests/clip_shards.py (3 classes, videos of 8..36 frames, failures in some views)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from cocon.config import load_config
from cocon.data.clips import dense_windows
from cocon.evaluate import analyses as A
from cocon.evaluate.claim import claim
from cocon.evaluate.common import unscored_videos
from cocon.evaluate.dense import evaluate
from cocon.evaluate.features import extract
from cocon.evaluate.report import report
from cocon.files import save_torch as save_atomic
from cocon.files import write_h5
from cocon.models.networks import DPC, ActionClassifier
from cocon.train.checkpoints import load_checkpoint
from cocon.train.engine import Engine
from cocon.train.methods import Finetune
from cocon.train.methods.finetune import milestones

from clip_shards import write_view


def finetune_engine(view, init_kind, init_path, cfg, out) -> Engine:
    """The engine fine-tuning `view` from `init_path` (an `init_kind` model; none: random) into `out`."""
    return Engine(Finetune(cfg, [view], {view: init_path} if init_path else {}, init_kind), out)


TRAINING = {
    "train": {
        "views": ["rgb", "flow_tvl1"],
        "num_blocks": 2,
        "block_len": 3,
        "stride": 2,
        "input_size": {"rgb": 32, "flow": 32},
        "val_fraction": 0.3,
    },
    "cpc": {"pred_steps": 1, "batch_size": 2},
    "runtime": {"workers": 0, "device": "cpu", "gpus": 0, "keep_checkpoints": 2},
}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    for view in ("rgb", "flow_tvl1"):
        write_view(root, view)
    return load_config(
        overrides={
            "output_dir": str(root),
            "seed": 1,
            **TRAINING,
            "finetune": {"epochs": 3, "batch_size": 2, "max_steps_per_epoch": 2, "lr_steps": [0.5]},
            "evaluate": {
                "window_stride": 1,
                "batch_size": 3,
                "consistency_top": 1,
                "consistency_min": 1,
                "alignment_blocks": 4,
                "retrieval_ks": [1, 2, 50],
            },
        }
    )


@pytest.fixture(scope="module")
def pretrained(cfg, tmp_path_factory):
    """A stage-1-like model.pt for rgb (random DPC weights, saved as the training stage saves them)."""
    torch.manual_seed(5)
    net = DPC(3, num_blocks=2, pred_steps=1)
    path = tmp_path_factory.mktemp("pre") / "model.pt"
    save_atomic({"models": {"rgb": net.state_dict()}, "method": "cpc"}, path)
    return path


@pytest.fixture(scope="module")
def finetuned(cfg, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        finetune_engine("rgb", "cpc", str(pretrained), cfg, out).fit()
    finally:
        torch.set_num_threads(n)
    return out


def test_classifier_shapes_and_pretrained_loading():
    torch.manual_seed(0)
    dpc = DPC(2, num_blocks=4, pred_steps=2, width=8)
    clf = ActionClassifier(2, num_classes=5, dropout=0.7, width=8)
    clf.load_pretrained(dpc.state_dict())
    for name, p in clf.named_parameters():
        if name.startswith(("encoder.", "gru.")):
            assert torch.equal(p, dpc.state_dict()[name])
    clf.eval()
    x = torch.randn(3, 4, 2, 5, 32, 32)
    assert clf(x).shape == (3, 5) and clf.features(x).shape == (3, 32)
    assert all(p.requires_grad for p in clf.parameters())  # every layer is trained, the GRU included
    with pytest.raises(ValueError, match="do not fit"):
        clf.load_pretrained({**dpc.state_dict(), "encoder.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="missing"):
        clf.load_pretrained({"encoder.conv1.weight": dpc.state_dict()["encoder.conv1.weight"]})


def test_milestones():
    assert milestones(100, [0.5, 0.7, 0.9]) == [50, 70, 90]
    assert milestones(3, [0.5, 0.7, 0.9]) == [2, 3]


def test_finetune_selects_the_best_validation_epoch(finetuned, pretrained):
    model = load_checkpoint(finetuned / "model.pt")
    hist = model["history"]
    assert [r["epoch"] for r in hist] == [0, 1, 2]
    best = min(hist, key=lambda r: (-r["val/top1"], r["val/total"], r["epoch"]))
    assert model["selected_epoch"] == best["epoch"]
    # the newest 2 epoch checkpoints are kept (runtime.keep_checkpoints), older ones deleted
    folder = finetuned / "checkpoints"
    assert sorted(p.name for p in folder.glob("epoch_*.pt")) == ["epoch_0001.pt", "epoch_0002.pt"]
    kept = {r: load_checkpoint(folder / f"epoch_{r:04d}.pt")["models"]["rgb"] for r in (1, 2)}
    chosen = kept.get(best["epoch"])
    if best["epoch"] < 2:  # an earlier epoch was selected: its weights were kept in best.pt
        kept_best = load_checkpoint(folder / "best.pt")
        assert kept_best["epoch"] == best["epoch"]
        chosen = kept_best["models"]["rgb"]
    assert all(torch.equal(chosen[k], v) for k, v in model["models"]["rgb"].items())
    assert model["class_names"] == ["A", "B", "C"] and model["init_kind"] == "cpc"
    assert [round(r["lr"], 8) for r in hist] == [1e-3, 1e-4, 1e-4]  # step after ceil(0.5 * 3) = 2 epochs
    # the encoder started from the pretrained weights (two epochs moved them, but the init was loaded)
    pre = load_checkpoint(pretrained)["models"]["rgb"]
    first = kept[1]
    w = "encoder.conv1.weight"
    assert (first[w] - pre[w]).abs().max() < 0.05 < (first[w] - torch.randn_like(pre[w]) * 0.1).abs().max()


def test_dense_evaluation_scores_every_test_video(cfg, finetuned, tmp_path):
    out = tmp_path / "scores.h5"
    result = evaluate(cfg, "rgb", finetuned / "model.pt", out)
    with h5py.File(out) as h5:
        ids = [s.decode() for s in h5["video_id"][()]]
        probs, labels, windows = h5["probs"][()], h5["label"][()], h5["windows"][()]
        assert h5.attrs["complete"] and json.loads(h5.attrs["class_names"]) == ["A", "B", "C"]
        assert json.loads(h5.attrs["config"])["seed"] == 1 and "git" in json.loads(h5.attrs["code_revision"])
    assert ids == ["B/v3", "C/v8"]  # the test role of split 1: 8 and 12 frames, shorter than... kept
    assert list(windows) == [len(dense_windows(n, 2, 3, 2, 1)) for n in (8, 12)]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert result["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    assert result["n_unscored"] == 0
    # videos failed in the shards are listed as unscored, never silently dropped
    assert unscored_videos(cfg, "flow_tvl1", "train", set()) == [
        "A/v0",
        "A/v1",
        "A/v2",
        "B/v4",
        "B/v5",
        "C/v6",
        "C/v7",
        "C/v9",
    ]
    assert unscored_videos(cfg, "flow_tvl1", "train", {"A/v0", "A/v1", "B/v4", "C/v6", "C/v7", "C/v9"}) == [
        "A/v2",
        "B/v5",
    ]


def test_features_random_init_is_reproducible(cfg, tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    with torch.no_grad():
        extract(cfg, "flow_tvl1", "random", None, a)
        extract(cfg, "flow_tvl1", "random", None, b)
    assert a.read_bytes() == b.read_bytes()
    with h5py.File(a) as h5:
        assert h5["train/feature"].shape == (6, 256) and h5["test/feature"].shape == (2, 256)  # A/v2, B/v5 failed
        assert h5["test/blocks"].shape == (2, 4, 256)
        assert np.isfinite(h5["train/feature"][()]).all()


def write_scores(path, ids, labels, probs, acc=None):
    write_h5(
        path,
        {
            "video_id": ids,
            "label": np.array(labels),
            "windows": np.ones(len(ids), np.int64),
            "probs": np.array(probs, np.float32),
            "unscored": [],
        },
        {
            "accuracy": float(np.mean(np.argmax(probs, 1) == labels)) if acc is None else acc,
            "n_videos": len(ids),
            "n_unscored": 0,
            "class_names": ["A", "B", "C"],
            "model_selected_epoch": 0,
        },
    )


def test_report_ensembles_tables_and_analyses(cfg, tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"v{i}" for i in range(12)]
    labels = rng.integers(0, 3, 12)
    probs = {v: rng.dirichlet(np.ones(3), 12) for v in ("rgb", "flow_tvl1")}
    scores, features = {}, {}
    for view, p in probs.items():
        order = rng.permutation(12) if view == "flow_tvl1" else np.arange(12)  # rows in another order
        write_scores(tmp_path / f"s_{view}.h5", [ids[i] for i in order], labels[order], p[order])
        scores[("cpc", view)] = tmp_path / f"s_{view}.h5"
        extract(cfg, view, "random", None, tmp_path / f"f_{view}.h5")
        features[("cpc", view)] = tmp_path / f"f_{view}.h5"
    out = tmp_path / "report"
    cfg = {**cfg, "evaluate": {**cfg["evaluate"], "paper": {"cpc": {"rgb": 63.7, "flow_tvl1": 69.8}}}}
    metrics = report(cfg, scores, features, out)
    # ensemble: weights rgb 2, flow 2 (config defaults) -> the plain mean, brute force per video
    want = np.mean([(np.argmax(2 * probs["rgb"][i] + 2 * probs["flow_tvl1"][i]) == labels[i]) for i in range(12)])
    assert metrics["classification"]["cpc"]["ensemble"]["accuracy"] == pytest.approx(want)
    assert metrics["classification"]["cpc"]["rgb"]["accuracy"] == pytest.approx(A.accuracy(probs["rgb"], labels))
    pv = metrics["analyses"]["per_view"]["cpc"]["rgb"]
    with h5py.File(features[("cpc", "rgb")]) as h5:
        q, ql, g, gl = h5["test/feature"][()], h5["test/label"][()], h5["train/feature"][()], h5["train/label"][()]
    assert pv["retrieval"] == {f"R@{k}": r for k, r in A.retrieval_recall(q, ql, g, gl, [1, 2, 50]).items()}
    assert metrics["analyses"]["consistency"]["cpc"]["classes"] >= 1
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert "confusion_cpc_rgb.png" in names and "tsne_cpc_flow_tvl1.png" not in names  # 2 test videos: no t-SNE
    assert "cosine_cpc_rgb.png" in names and "alignment_cpc_rgb_0.png" not in names  # no class with 2 test videos
    html = (out / "tables.html").read_text()
    assert "Table 1" in html and f"{100 * want:.1f}" in html
    md = (out / "tables.md").read_text()  # the paper's numbers for the setting, beside ours
    assert "| paper: CPC | 63.7 | 69.8 | – |" in md and "Table 1b" in md
    assert json.loads((out / "metrics.json").read_text())["views"] == ["rgb", "flow_tvl1"]


def test_claim_mean_and_std_over_seeds(cfg, tmp_path):
    ids, labels = ["a", "b", "c", "d"], np.array([0, 1, 2, 0])
    right = np.eye(3)[labels]
    wrong = np.eye(3)[(labels + 1) % 3]
    acc = {"random": [0.25, 0.5, 0.25], "cpc": [0.5, 0.5, 0.75], "cocon": [1.0, 1.0, 1.0]}
    scores = {}
    for init, per_seed in acc.items():
        for seed, a in enumerate(per_seed):
            k = int(a * 4)
            p = np.concatenate([right[:k], wrong[k:]])
            for view in ("rgb", "flow_tvl1"):
                path = tmp_path / f"{seed}_{init}_{view}.h5"
                write_scores(path, ids, labels, p)
                scores[(seed, init, view)] = path
    result = claim(cfg, scores, tmp_path)
    for init, per_seed in acc.items():
        got = result["accuracy"]["rgb"][init]
        assert got["mean"] == pytest.approx(np.mean(per_seed)) and got["std"] == pytest.approx(np.std(per_seed, ddof=1))
        assert result["accuracy"]["ensemble"][init]["mean"] == pytest.approx(np.mean(per_seed))
    # an ordering holds when the gap of the means exceeds 2 pooled standard deviations
    pooled = np.sqrt((np.var(acc["random"], ddof=1) + np.var(acc["cpc"], ddof=1)) / 2)
    assert result["orderings"]["rgb"]["random<cpc"] == {
        "gap": pytest.approx(0.25),
        "pooled_std": pytest.approx(pooled),
        "holds": False,
    }  # 0.25 < 2 x 0.144
    assert result["orderings"]["rgb"]["cpc<cocon"]["holds"]  # 0.417 > 2 x 0.102
    assert "control<cocon" not in result["orderings"]["rgb"]  # no control run in these scores
    assert "± " in (tmp_path / "claim.md").read_text()


def test_claim_says_whether_stage_1_learned(tmp_path):
    from cocon.evaluate.claim import stage1, stage1_lines

    metrics = {}
    for seed, last in ((0, 0.05), (1, 0.2)):  # chance 1 / (8 x 3) = 0.042: seed 0 at 1.2x, seed 1 at 4.8x
        path = tmp_path / f"cpc_{seed}.csv"
        path.write_text(f"epoch,val/top1/rgb\n0,0.04\n1,{last}\n")
        metrics[(seed, "cpc:rgb")] = path
    metrics[(0, "cocon")] = path  # other runs are not stage 1
    res = stage1({"cpc": {"batch_size": 8, "pred_steps": 3}}, metrics)
    assert res["chance"] == pytest.approx(1 / 24) and res["val_top1"] == {"rgb": {0: 0.05, 1: 0.2}}
    assert res["learned"] == {"rgb": {0: False, 1: True}}
    assert "seed 0 0.050 (1.2×, not learned)" in "\n".join(stage1_lines(res))


@pytest.mark.slow
def test_finetune_resume_equals_an_uninterrupted_run(cfg, tmp_path, one_torch_thread):
    finetune_engine("rgb", "random", None, cfg, tmp_path / "straight").fit()
    interrupted = finetune_engine("rgb", "random", None, cfg, tmp_path / "resumed")
    interrupted.epochs = 1  # as if killed after the first epoch's checkpoint (same config, same schedule)
    interrupted.fit()
    resumed = finetune_engine("rgb", "random", None, cfg, tmp_path / "resumed")
    resumed.fit()
    assert resumed.start_epoch == 1
    a, b = load_checkpoint(tmp_path / "straight" / "model.pt"), load_checkpoint(tmp_path / "resumed" / "model.pt")
    assert a["history"] == b["history"] and a["selected_epoch"] == b["selected_epoch"]
    assert all(torch.equal(a["models"]["rgb"][k], v) for k, v in b["models"]["rgb"].items())


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"finetune": {"inits": ["random", "cocon"]}, "train": {"views": ["rgb"]}}, "finetune.inits"),
        ({"evaluate": {"consistency_top": 2, "consistency_min": 3}}, "evaluate.consistency_min"),
        ({"evaluate": {"window_stride": 9}}, "evaluate.window_stride"),
        ({"finetune": {"dropout": 1.5}}, "finetune.dropout"),
        ({"evaluate": {"ensemble_weights": {"depth": 1}}}, "evaluate.ensemble_weights"),
    ],
)
def test_bad_evaluation_config_is_rejected_naming_the_key(overrides, key):
    from cocon.config import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=overrides)


def test_classifier_of_other_classes_is_refused(cfg, finetuned, tmp_path):
    ck = load_checkpoint(finetuned / "model.pt")
    ck["class_names"] = ["X", "Y", "Z"]
    save_atomic(ck, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="classes differ"):
        evaluate(cfg, "rgb", tmp_path / "other.pt", tmp_path / "scores.h5")
    assert not (tmp_path / "scores.h5").exists() and not (tmp_path / "scores.h5.partial").exists()
