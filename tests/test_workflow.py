"""The Snakemake workflow end to end: real `snakemake` runs of the preprocessing DAG on tiny configs."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from cocon import inits as I
from cocon import views as V
from cocon.data.shards import ShardReader
from cocon.sources.records import VideoRecord, assign_shards, write_manifest

from conftest import stage_config
from workflow_runs import ALL_VIEWS, PREPROCESS, REPO, SNAKEMAKE, TINY, artefacts, comparable, job_counts, snakemake

pytestmark = pytest.mark.slow  # real snakemake runs of the DAG (minutes on 2 cores)


def test_demo_dag_produces_every_shard_and_a_summary(demo_run):
    res = demo_run / "results"
    n_videos = 2 * 2 * 2
    shards = sorted((res / "shards" / "rgb").glob("*.h5"))
    assert [p.name for p in shards] == ["00000.h5", "00001.h5", "00002.h5"]
    for view in ("rgb", "flow_tvl1", "flow_farneback"):
        files = sorted((res / "shards" / view).glob("*.h5"))
        assert len(files) == 3
        total = 0
        for f in files:
            r = ShardReader(f)
            assert r.attrs["view"] == view and r.attrs["complete"] is True
            for i in r.ok_rows():
                x = r.read(i)
                assert x.dtype == np.uint8 and x.shape[0] == 12 and min(x.shape[1:3]) == 32
                assert x.shape[3] == (3 if view == "rgb" else 2)
            total += len(r.index)
        assert total == n_videos
    summary = json.loads((res / "reports" / "preprocess_summary.json").read_text())
    assert summary["videos"] == n_videos
    assert {v: (s["ok"], s["failed"]) for v, s in summary["views"].items()} == {
        "rgb": (8, 0),
        "flow_tvl1": (8, 0),
        "flow_farneback": (8, 0),
        "pose": (8, 0),
        "seg": (8, 0),
    }
    # every job wrote its log and the heavy ones their benchmark
    assert (demo_run / "logs" / "frames" / "00002.log").stat().st_size > 0
    assert (demo_run / "benchmarks" / "flow_tvl1" / "00000.tsv").exists()


def test_demo_dag_trains_cpc_per_view_then_cocon(demo_run):
    from cocon.train.checkpoints import load_checkpoint

    train = demo_run / "results" / "train"
    for view in ("rgb", "flow_tvl1"):
        ck = load_checkpoint(train / "cpc" / view / "model.pt")
        assert ck["method"] == "cpc" and list(ck["models"]) == [view] and len(ck["history"]) == 1
        assert (demo_run / "logs" / "train" / f"cpc_{view}.log").exists()
    cocon = load_checkpoint(train / "cocon" / "model.pt")
    assert cocon["method"] == "cocon" and sorted(cocon["models"]) == ["flow_tvl1", "rgb"]
    header = (train / "cocon" / "metrics.csv").read_text().splitlines()[0]
    assert "train/sync/flow_tvl1-rgb" in header and "val/total" in header
    assert (demo_run / "benchmarks" / "train" / "cocon.tsv").exists()


def test_demo_dag_finetunes_tests_and_reports(demo_run):
    from cocon.train.checkpoints import load_checkpoint

    res = demo_run / "results"
    for init in ("random", "cpc", "cocon"):
        for view in ("rgb", "flow_tvl1"):
            ck = load_checkpoint(res / "finetune" / init / view / "model.pt")
            assert (
                ck["method"] == "finetune" and ck["init_kind"] == init and ck["class_names"] == ["Wave", "JumpingJack"]
            )
            assert (res / "eval" / init / view / "scores.h5").exists() and (
                res / "features" / init / f"{view}.h5"
            ).exists()
    metrics = json.loads((res / "reports" / "metrics.json").read_text())
    for init in ("random", "cpc", "cocon"):
        per = metrics["classification"][init]
        # every test video scored (2 classes x 1 test group x 2 clips), none unscored, in each view and the ensemble
        assert [per[v]["n_videos"] for v in ("rgb", "flow_tvl1", "ensemble")] == [4, 4, 4]
        assert per["rgb"]["n_unscored"] == 0 and 0.0 <= per["ensemble"]["accuracy"] <= 1.0
        assert set(metrics["analyses"]["per_view"][init]["rgb"]["retrieval"]) == {"R@1", "R@5", "R@10", "R@20", "R@50"}
        assert metrics["analyses"]["consistency"][init]["classes"] == 2
    figures = {p.name for p in (res / "reports" / "figures").iterdir()}
    assert {
        "tsne_cocon_rgb.png",
        "cosine_cpc_flow_tvl1.png",
        "confusion_random_rgb.png",
        "alignment_cocon_flow_tvl1_0.png",
        "alignment_cocon_flow_tvl1_1.png",
    } <= figures
    page = (res / "reports" / "tables.html").read_text()
    assert "Table 1" in page and 'href="views/train1_' in page  # the preprocessing figures, linked
    assert (demo_run / "benchmarks" / "finetune" / "cocon_rgb.tsv").exists()


def test_snakemake_report_builds_from_the_tiny_run(demo_run, tmp_path):
    out = tmp_path / "report.html"
    snakemake(demo_run, ALL_VIEWS, "--report", str(out))
    page = out.read_text(errors="replace")
    assert out.stat().st_size > 50_000 and "tables.html" in page and "tsne_cocon_rgb.png" in page


def test_rerun_in_place_does_nothing(demo_run):
    proc = snakemake(demo_run, ALL_VIEWS, "--cores", "2", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


EVAL_PAIRS = list(zip(I.DEFAULT_INITS, ["rgb", "flow_tvl1"] * 2))
# A clean rerun runs every job kind of the training DAG at least once: one shard of each view the training
# does not read (Farneback flow, pose, seg) and every shard of those it does (rgb, TVL1 flow), both stage-1
# runs, CoCon and the control, and one fine-tune, dense test and feature file per init kind (both views
# among them). The report over all of them is compared byte for byte between a local and a SLURM run of the
# whole DAG (tests/test_slurm.py), the views figure by tests/test_views_figure.py.
RERUN_TARGETS = [
    *(f"results/shards/{view}/00000.h5" for view in ("flow_farneback", "pose", "seg")),
    *(f"results/eval/{init}/{view}/scores.h5" for init, view in EVAL_PAIRS),
    *(f"results/features/{init}/{view}.h5" for init, view in EVAL_PAIRS),
]


def test_rerun_from_clean_directory_is_byte_identical(demo_run, tmp_path):
    snakemake(tmp_path, ALL_VIEWS, "--cores", "2", *RERUN_TARGETS)
    first, second = artefacts(demo_run), artefacts(tmp_path)
    assert comparable(second) <= comparable(first)
    shards = {view: sum(k.startswith(f"shards/{view}/") for k in second) for view in V.all_views()}
    assert shards == {"rgb": 3, "flow_tvl1": 3, "flow_farneback": 1, "pose": 1, "seg": 1}
    for run in ("cpc/rgb", "cpc/flow_tvl1", "cocon", "control"):
        assert f"train/{run}/model.pt" in second, run
    assert {k.split("/")[1] for k in second if k.startswith("finetune/") and k.endswith("model.pt")} == set(
        I.DEFAULT_INITS
    )
    # videos, manifest, shards, checkpoints, models, scores and features are identical
    different = [k for k in comparable(second) if first[k] != second[k]]
    assert different == []


def test_four_views_train_end_to_end(demo_run, tmp_path):
    """The paper's four-view setting: CPC per view, CoCon over all six pairs, fine-tuning, the dense test
    and the report, on the demo run's shards (a copy of its folder: no preprocessing job reruns)."""
    work = tmp_path / "four"
    shutil.copytree(demo_run, work, symlinks=True)
    views = ["rgb", "flow_tvl1", "pose", "seg"]
    cfg = {
        **ALL_VIEWS,
        "train": {**TINY["train"], "views": views, "input_size": {"rgb": 32, "flow": 32, "pose": 32, "seg": 32}},
        "finetune": {**TINY["finetune"], "inits": ["cocon"]},
    }
    dry = job_counts(snakemake(work, cfg, "--cores", "2", "-n").stdout)
    assert not {"frames", "flow", "seg", "pose"} & set(dry)  # the shards are reused
    # only what the new views can change (docs/reruns.md): their CPC, stage 2 (its views changed) and every
    # CoCon fine-tune; rgb's and flow's CPC stay (tests/test_reruns.py checks each change's job set)
    assert (dry["cpc"], dry["cocon"], dry["finetune"], dry["evaluate"]) == (2, 1, 4, 4)
    snakemake(work, cfg, "--cores", "2")
    header = (work / "results" / "train" / "cocon" / "metrics.csv").read_text().splitlines()[0].split(",")
    pairs = {c.split("/")[-1] for c in header if c.startswith("val/sync/")}
    assert pairs == {"-".join(sorted(p)) for p in itertools.combinations(views, 2)} and len(pairs) == 6
    metrics = json.loads((work / "results" / "reports" / "metrics.json").read_text())
    assert metrics["views"] == views
    assert set(metrics["classification"]["cocon"]) == {*views, "ensemble"}
    assert metrics["classification"]["cocon"]["ensemble"]["weights"] == {"rgb": 2, "flow_tvl1": 2, "pose": 1, "seg": 1}


def test_claim_target_runs_every_seed_on_the_same_shards(demo_run):
    cfg = {**ALL_VIEWS, "claim": {"seeds": [4, 7]}}
    dry = job_counts(snakemake(demo_run, cfg, "--cores", "2", "-n", "claim").stdout)
    rules = ("claim_cpc", "claim_cocon", "claim_control", "claim_finetune", "claim_evaluate", "claim")
    rules = (*rules, "claim_cocon_paper", "claim_features")
    assert {k: dry.get(k) for k in rules} == {  # 2 seeds; inits random, cpc, cocon, control, cocon_paper; 2 views
        "claim_cpc": 4,
        "claim_cocon": 2,
        "claim_control": 2,
        "claim_cocon_paper": 2,
        "claim_finetune": 20,
        "claim_evaluate": 20,
        "claim_features": 20,
        "claim": 1,
    }
    assert "frames" not in dry and "flow" not in dry  # the shards are reused
    # the claim compares every init whatever finetune.inits says (the default run's own list)
    one = {**ALL_VIEWS, "claim": {"seeds": [4]}, "finetune": {**TINY["finetune"], "inits": ["random", "cocon"]}}
    snakemake(demo_run, one, "--cores", "2", "claim")
    result = json.loads((demo_run / "results" / "claim" / "claim.json").read_text())
    inits = {"random", "cpc", "cocon", "control", "cocon_paper"}
    assert result["seeds"] == [4] and set(result["accuracy"]["rgb"]) == inits
    assert set(result["orderings"]["ensemble"]) == {"random<cpc", "cpc<cocon", "control<cocon", "cpc<cocon_paper"}
    for measure in ("knn", "linear"):  # frozen features, beside fine-tuning
        assert set(result["frozen"][measure]["accuracy"]["flow_tvl1"]) == inits
        assert "cpc<cocon" in result["frozen"][measure]["orderings"]["flow_tvl1"]
    assert {"collapse", "coop", "finetune", "per_class"} <= set(result["diagnostics"])
    cpc = result["config"]["cpc"]  # did stage 1 learn: CPC's last validation top-1 per view and seed vs chance
    assert result["stage1"]["chance"] == pytest.approx(1 / (cpc["batch_size"] * cpc["pred_steps"]))
    assert {v: set(by) for v, by in result["stage1"]["val_top1"].items()} == {"rgb": {"4"}, "flow_tvl1": {"4"}}
    figures = {p.name for p in (demo_run / "results" / "claim" / "figures").glob("*.png")}
    assert figures == {"collapse.png", "coop.png", "finetune.png", "per_class.png"}
    from cocon.train.checkpoints import load_checkpoint

    ck = load_checkpoint(demo_run / "results" / "claim" / "seed4" / "train" / "cocon" / "model.pt")
    assert json.loads(ck["config"])["seed"] == 4


def test_unknown_config_key_is_rejected_before_any_job(tmp_path):
    bad = {**TINY, "frames": {**TINY["frames"], "shortside": 64}}
    proc = snakemake(tmp_path, bad, "--cores", "1", check=False)
    assert proc.returncode != 0
    assert "frames.shortside" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_bad_value_is_rejected_naming_the_key(tmp_path):
    bad = {**TINY, "flow": {"methods": ["tvl1", "brox"]}}
    proc = snakemake(tmp_path, bad, "--cores", "1", "-n", check=False)
    assert proc.returncode != 0 and "flow.methods" in proc.stderr + proc.stdout


def test_lint_is_clean():
    proc = subprocess.run(
        [*SNAKEMAKE, "--lint", "-s", str(REPO / "Snakefile"), "-d", str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def _write_video(path: Path, n_frames: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 255, (48, 96, 3), dtype=np.uint8)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"XVID"), 25, (64, 48))
    for t in range(n_frames):
        w.write(np.ascontiguousarray(tex[:, t : t + 64]))
    w.release()


@pytest.fixture
def csv_dataset(tmp_path) -> Path:
    """A generic-CSV dataset of real videos, one of them corrupt and one zero bytes."""
    data = tmp_path / "data"
    (data / "walk").mkdir(parents=True)
    (data / "run").mkdir()
    rows = ["video,label,split,group"]
    for i in range(4):
        label = ("walk", "run")[i % 2]
        _write_video(data / label / f"clip{i}.avi", 12, i)
        rows.append(f"{label}/clip{i}.avi,{label},{'train' if i < 3 else 'test'},g{i // 2}")
    (data / "run" / "broken.avi").write_bytes(b"\x00not a video" * 100)
    (data / "walk" / "empty.avi").write_bytes(b"")
    rows += ["run/broken.avi,run,train,g9", "walk/empty.avi,walk,test,g9"]
    (data / "videos.csv").write_text("\n".join(rows) + "\n")
    return data


def test_corrupt_videos_are_reported_and_the_rest_completes(tmp_path, csv_dataset):
    cfg = {
        **TINY,
        "dataset": {"format": "csv", "name": "mini", "manifest": str(csv_dataset / "videos.csv")},
        "shards": {"videos_per_shard": 6},
        "flow": {"methods": ["farneback"]},
        "train": {**TINY["train"], "views": ["rgb", "flow_farneback"]},
    }
    proc = snakemake(tmp_path / "run", cfg, "--cores", "2", *PREPROCESS)
    out = proc.stdout + proc.stderr
    assert "FAILED run/broken" in out and "FAILED walk/empty" in out  # the end-of-run summary
    r = ShardReader(tmp_path / "run" / "results" / "shards" / "rgb" / "00000.h5")
    assert dict(r.failures()) == {
        "run/broken": "cannot be opened: not a video, or an unsupported container or codec",
        "walk/empty": "zero-byte file",
    }
    assert len(r.ok_rows()) == 4 and all(r.read(i).shape[0] == 12 for i in r.ok_rows())
    log = (tmp_path / "run" / "logs" / "frames" / "00000.log").read_text()
    assert "FAILED run/broken" in log and "FAILED walk/empty" in log
    flow = ShardReader(tmp_path / "run" / "results" / "shards" / "flow_farneback" / "00000.h5")
    assert [v for v, why in flow.failures() if why.startswith("failed upstream (rgb)")] == ["run/broken", "walk/empty"]
    table = (tmp_path / "run" / "results" / "reports" / "failed_videos.tsv").read_text().splitlines()
    assert len(table) == 1 + 2 * 2  # header + 2 videos x (rgb, flow_farneback)


def test_missing_annotation_line_is_named_before_any_job(tmp_path, csv_dataset):
    (csv_dataset / "videos.csv").write_text("video,label,split\nwalk/clip0.avi,walk,train\nwalk/nope.avi,walk,train\n")
    cfg = {**TINY, "dataset": {"format": "csv", "name": "mini", "manifest": str(csv_dataset / "videos.csv")}}
    proc = snakemake(tmp_path / "run", cfg, "--cores", "1", check=False)
    assert proc.returncode != 0
    assert f"{csv_dataset / 'videos.csv'}:3" in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "results").exists()


def test_killed_stage_leaves_no_complete_looking_output(tmp_path):
    """SIGKILL a frames job mid-shard: only a .partial remains, which no rule accepts as output."""
    videos = []
    for i in range(40):
        p = tmp_path / f"v{i}.avi"
        _write_video(p, 30, i)
        videos.append(VideoRecord(f"v{i:02d}", str(p), "x", 0, "", {"1": "train"}))
    manifest = tmp_path / "m.tsv"
    write_manifest(manifest, assign_shards(videos, 40))
    out = tmp_path / "rgb" / "00000.h5"
    params = {
        "short_side": 48,
        "interpolation": "area",
        "max_frames": None,
        "min_frames": 8,
        "encoding": {"codec": "png", "level": 9},
    }
    job = [sys.executable, "-m", "cocon", "frames", "--manifest", str(manifest), "--shard", "00000", "--out", str(out)]
    job += ["--config-json", stage_config("frames", params, {"name": "t", "format": "csv"})]
    proc = subprocess.Popen(
        job,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    partial = out.with_name(out.name + ".partial")
    deadline = time.monotonic() + 60
    while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert proc.poll() is None, "the job finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial.exists()
    # re-running the job replaces the stale partial with a complete shard
    subprocess.run(
        job,
        check=True,
        capture_output=True,
    )
    assert out.exists() and not partial.exists() and len(ShardReader(out).ok_rows()) == 40


def test_dry_run_shards_are_fixed_at_parse_time(tmp_path):
    """One job per shard and stage, decided before anything runs (no checkpoints)."""
    cfg = {**TINY, "demo": {**TINY["demo"], "groups_per_class": 3, "clips_per_group": 3}}
    proc = snakemake(tmp_path, cfg, "-n", "--cores", "1")
    # 2 classes x 3 groups x 3 clips = 18 videos, 3 per shard -> 6 shards per stage
    counts = job_counts(proc.stdout)
    assert counts["frames"] == 6 and counts["flow"] == 12 and counts["demo_dataset"] == 1
    assert counts["cpc"] == 2 and counts["cocon"] == 1
    shutil.rmtree(tmp_path / ".snakemake", ignore_errors=True)


@pytest.mark.parametrize(
    "backend, visible, tvl1_gpus", [("torch", "", 1), ("opencv", "0", 0), ("auto", "", 0), ("auto", "0", 1)]
)
def test_tvl1_jobs_ask_for_a_gpu_only_when_they_will_use_it(tmp_path, monkeypatch, backend, visible, tvl1_gpus):
    """backend torch: one GPU per TVL1 job; auto: one when the machine running Snakemake has a GPU
    (here: COCON_GPU_IDS); opencv: none. Farneback jobs never; every flow job runs under `cocon gpus`."""
    monkeypatch.setenv("COCON_GPU_IDS", visible)
    cfg = {**TINY, "flow": {**TINY.get("flow", {}), "tvl1": {"backend": backend}}}
    out = snakemake(tmp_path, cfg, "-n", "-p", "--cores", "1", "--until", "flow").stdout
    cmds = [line for line in out.splitlines() if "-m cocon flow" in line]
    assert cmds and all(line.split("Shell command:")[-1].lstrip().startswith("python -m cocon gpus") for line in cmds)
    for line in cmds:
        want = tvl1_gpus if "--method tvl1" in line else 0
        assert f"cocon gpus {want} --" in line, line
    shutil.rmtree(tmp_path / ".snakemake", ignore_errors=True)


def test_replaced_video_reruns_only_its_shard(tmp_path, csv_dataset):
    cfg = {
        **TINY,
        "dataset": {"format": "csv", "name": "mini", "manifest": str(csv_dataset / "videos.csv")},
        "shards": {"videos_per_shard": 3},
        "flow": {"methods": ["farneback"]},
        "train": {**TINY["train"], "views": ["rgb", "flow_farneback"]},
    }
    work = tmp_path / "run"
    snakemake(work, cfg, "--cores", "2", *PREPROCESS)
    assert job_counts(snakemake(work, cfg, "-n", "--cores", "1", *PREPROCESS).stdout).get("total", 0) == 0
    _write_video(csv_dataset / "run" / "clip1.avi", 14, 99)  # a new version of one video
    out = snakemake(work, cfg, "-n", "--cores", "1", *PREPROCESS).stdout
    counts = job_counts(out)
    # shards hold sorted ids: run/broken, run/clip1, run/clip3 | walk/clip0, walk/clip2, walk/empty
    assert counts["frames"] == 1 and "shard=00000" in out and "shard=00001" not in out


def test_resources_come_from_one_table_that_the_slurm_profile_does_not_override(tmp_path):
    """Threads, memory and runtime of every job are cocon.workflow.resources' (x attempt); the SLURM profile
    holds executor settings only, so the two cannot drift apart."""
    from cocon.workflow.resources import NETWORK_RULES, RULES

    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert not {"set-threads", "set-resources", "set-default-resources"} & set(profile)
    assert set(profile["default-resources"]) == {"slurm_partition", "slurm_account"}
    # runtime.threads unset: the table's threads; set: every job that runs a network takes it
    for config_threads in (None, 3):
        cfg = {**ALL_VIEWS, "runtime": {**ALL_VIEWS["runtime"], "threads": config_threads}}
        out = snakemake(tmp_path, cfg, "-n", "--cores", "16").stdout
        jobs, seen = [], set()
        for line in out.splitlines():
            if line.startswith(("rule ", "localrule ")):
                jobs.append([line])
            elif jobs:
                jobs[-1].append(line)
        for job in jobs:
            rule = job[0].split()[-1].rstrip(":")
            base = {"control": "cocon"}.get(rule, rule)  # `use rule cocon as control` keeps cocon's resources
            if base not in RULES:
                continue
            res = next(line for line in job if line.strip().startswith("resources:"))
            threads = next((int(line.split()[-1]) for line in job if line.strip().startswith("threads:")), 1)
            want = RULES[base]
            assert f"mem_mb={want.mem_mb}," in res and f"runtime={want.runtime}," in res, (rule, res)
            network = config_threads is not None and base in NETWORK_RULES
            assert threads == (config_threads if network else want.threads), (rule, threads, config_threads)
            seen.add(rule)
        assert seen >= {"frames", "flow", "seg", "pose", "cpc", "cocon", "control", "finetune", "evaluate", "features"}
    shutil.rmtree(tmp_path / ".snakemake", ignore_errors=True)
