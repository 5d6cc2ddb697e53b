"""The Table 1 recipes (configs/*.yaml): each parses and validates, and a dry run on a stand-in dataset
of the same format yields the expected jobs (pretraining here, or fine-tuning from another run's models)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cocon.config import ConfigError, load_config

from dataset_layouts import make_hmdb, make_kinetics, make_ucf
from workflow_runs import job_counts

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs").glob("*.yaml"))
MAKERS = {"ucf101": make_ucf, "hmdb51": make_hmdb, "kinetics400": make_kinetics}


def recipe(name: str) -> dict:
    return yaml.safe_load((REPO / "configs" / name).read_text())


def test_every_recipe_validates_and_states_the_paper_setting():
    assert {p.name for p in RECIPES} >= {
        "ucf101_split1.yaml",
        "ucf101_split1_4views.yaml",
        "hmdb51_split1.yaml",
        "kinetics400_pretrain.yaml",
        "kinetics400_to_ucf101.yaml",
        "kinetics400_to_hmdb51.yaml",
    }
    for path in RECIPES:
        cfg = yaml.safe_load(path.read_text())
        cfg["train"].pop("pretrained_run", None)  # checked against real files below
        cfg = load_config(overrides=cfg)
        t, cpc, cocon = cfg["train"], cfg["cpc"], cfg["cocon"]
        assert (t["depth"], t["width"], t["input_size"]["rgb"], t["num_blocks"], t["block_len"], cpc["pred_steps"]) == (
            18,
            64,
            128,
            8,
            5,
            3,
        ), path.name
        assert cpc["batch_size"] == 64 and cpc["lr"] == 1e-3 and cpc["weight_decay"] == 1e-5, path.name
        if path.name.startswith("kinetics400_pretrain"):
            assert (cpc["epochs"], cocon["epochs"]) == (80, 40)
        else:
            assert cfg["evaluate"]["paper"], f"{path.name}: the paper's numbers for this setting"
            if "pretrained_run" not in yaml.safe_load(path.read_text())["train"]:
                assert (cpc["epochs"], cocon["epochs"]) == (100, 60), path.name


def _dry_run(tmp_path: Path, cfg: dict, *targets: str) -> dict[str, int]:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        *targets,
        "-n",
        "--cores",
        "4",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(tmp_path),
        "--configfile",
        str(path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return job_counts(proc.stdout)


def _on_stand_in(tmp_path: Path, name: str) -> dict:
    cfg = recipe(name)
    root, ann = MAKERS[cfg["dataset"]["format"]](tmp_path / "data")
    cfg["dataset"].update(root=str(root), manifest=str(ann))
    cfg["output_dir"] = str(tmp_path / "results")
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("name, views", [("ucf101_split1.yaml", 2), ("ucf101_split1_4views.yaml", 4)])
def test_ucf101_recipes_pretrain_then_fine_tune(tmp_path, name, views):
    jobs = _dry_run(tmp_path, _on_stand_in(tmp_path, name))
    assert (jobs["cpc"], jobs["cocon"], jobs["control"]) == (views, 1, 1)
    assert jobs["finetune"] == jobs["evaluate"] == jobs["features"] == 4 * views  # random, cpc, cocon, control
    assert jobs["frames"] == jobs["flow"] == 1 and jobs["report"] == 1
    assert jobs.get("seg", 0) == jobs.get("pose", 0) == (1 if views == 4 else 0)


@pytest.mark.slow
def test_kinetics_pretraining_then_fine_tuning_on_another_dataset(tmp_path):
    k400 = _on_stand_in(tmp_path / "k400", "kinetics400_pretrain.yaml")
    jobs = _dry_run(tmp_path / "k400", k400, "pretrain")
    assert (jobs["cpc"], jobs["cocon"], jobs["control"]) == (2, 1, 1) and "finetune" not in jobs
    ucf = _on_stand_in(tmp_path / "ucf", "kinetics400_to_ucf101.yaml")
    ucf["train"]["pretrained_run"] = k400["output_dir"]
    with pytest.raises(ConfigError, match="train.pretrained_run.*lacks .*train/cpc/rgb/model.pt"):
        load_config(overrides=ucf)  # the K400 run has not pretrained yet
    for rel in ("train/cpc/rgb", "train/cpc/flow_farneback", "train/cocon", "train/control"):
        (Path(k400["output_dir"]) / rel).mkdir(parents=True)
        (Path(k400["output_dir"]) / rel / "model.pt").write_bytes(b"")
    jobs = _dry_run(tmp_path / "ucf", ucf)
    assert not {"cpc", "cocon", "control"} & set(jobs)  # pretrained on Kinetics, not here
    assert jobs["finetune"] == jobs["evaluate"] == 8 and jobs["flow"] == 1
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-p",
            "--cores",
            "4",
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(tmp_path / "ucf"),
            "--configfile",
            str(tmp_path / "ucf" / "recipe.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    assert f"--init rgb={k400['output_dir']}/train/cocon/model.pt" in out


def _dry_run_printed(tmp_path: Path, configfile: Path, *targets: str) -> str:
    """What `snakemake -n -p` prints (stdout and stderr) for one --configfile."""
    cmd = [sys.executable, "-m", "snakemake", *targets, "-n", "-p", "--cores", "4", "-s", str(REPO / "Snakefile")]
    proc = subprocess.run(
        [*cmd, "-d", str(tmp_path), "--configfile", str(configfile)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_partial_config_merges_over_the_demo_and_a_recipe_replaces_it(tmp_path):
    """A file without a dataset (an overlay) changes only what it sets: the rest is the demo's (config.yaml),
    as Snakemake merges config files. A recipe (it names its dataset) replaces the demo: what it leaves out
    is the schema's default. Each run says which it is before any job."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("claim: {seeds: [21, 22]}\n")
    printed = _dry_run_printed(tmp_path / "demo", overlay, "claim")
    assert f"config: {REPO / 'config.yaml'} (the demo), with {overlay} merged over it" in printed
    demo = yaml.safe_load((REPO / "config.yaml").read_text())
    epochs = demo["claim"].get("cpc_epochs") or demo["cpc"]["epochs"]  # the claim's runs: the demo's claim epochs
    assert f'"epochs":{epochs}' in printed and '"width":8' in printed  # the demo's, not the schema's
    assert printed.count("train cpc --views rgb") == 2  # one per claim seed
    cfg = _on_stand_in(tmp_path, "ucf101_split1.yaml")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(cfg))
    printed = _dry_run_printed(tmp_path / "ucf", tmp_path / "recipe.yaml")
    assert "(a recipe: it names its dataset, so" in printed and "config.yaml is not read" in printed
    assert '"epochs":100' in printed and '"width":64' in printed


@pytest.mark.slow
def test_kinetics_pretraining_over_two_nodes_requests_them_for_every_training_job(tmp_path):
    cfg = _on_stand_in(tmp_path, "kinetics400_pretrain.yaml")
    cfg.setdefault("runtime", {}).update(nodes=2, gpus=4)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "pretrain", "-n", "--cores", "4", "-s", str(REPO / "Snakefile")]
    proc = subprocess.run([*cmd, "-d", str(tmp_path), "--configfile", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    resources = {}  # rule -> its resources line, for every scheduled job
    for block in proc.stdout.split("\nrule ")[1:]:
        name = block.split(":", 1)[0]
        resources.setdefault(name, []).append(next(x for x in block.splitlines() if "resources:" in x))
    assert len(resources["cpc"]) == 2 and len(resources["cocon"]) == len(resources["control"]) == 1
    for rule in ("cpc", "cocon", "control"):
        for line in resources[rule]:  # one SLURM job over 2 nodes, one srun task (a torchrun agent) per node
            assert "nodes=2, tasks=2, mpi=srun, slurm_extra=--gpus-per-node=4" in line, line
            assert "launcher=python -m cocon launch --nodes 2 --gpus-per-node 4" in line, line
    assert all("nodes=" not in line for line in resources["frames"] + resources["flow"])  # preprocessing: one node
