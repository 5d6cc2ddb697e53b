"""Running the repository's Snakemake workflow from tests: the tiny demo configs (TINY, ALL_VIEWS), `snakemake`
in a work folder, and readers of what a run printed and wrote (job counts of a dry run, the artefacts under
results/ and those compared between runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import tiny_training

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

TINY = {
    "output_dir": "results",
    "seed": 3,
    "dataset": {"format": "demo", "name": "demo"},  # a config of its own (a recipe), not merged over config.yaml
    "demo": {
        "classes": 2,
        "groups_per_class": 2,
        "clips_per_group": 2,
        "test_groups": 1,
        "frames": 12,
        "width": 64,
        "height": 48,
    },
    "shards": {"videos_per_shard": 3},
    "frames": {"short_side": 32, "min_frames": 8},
    "flow": {"tvl1": {"scales": 2, "warps": 2}},
    **tiny_training(train={"val_fraction": 0.3}),
    "finetune": {"epochs": 2, "batch_size": 2, "max_steps_per_epoch": 1},
    "evaluate": {"consistency_top": 1, "consistency_min": 1, "alignment_blocks": 4, "batch_size": 4},
}
# The demo DAG with every view: pose and seg by the demo's small randomly initialised models (config.yaml).
ALL_VIEWS = {
    **TINY,
    "seg": {
        "enabled": True,
        "config": "segformer_mit-b0_8xb2-160k_ade20k-512x512",
        "checkpoint": None,
        "input_scale": [64, 32],
        "gpus": 0,
    },
    "pose": {
        "enabled": True,
        "config": "td-hm_mobilenetv2_8xb64-210e_coco-256x192",
        "checkpoint": None,
        "input_size": [48, 64],
        "boxes": "frame",
        "gpus": 0,
    },
}
# Preprocessing-only configs (datasets of a few videos) train nothing: their target is the summary.
PREPROCESS = ["--until", "preprocess_summary"]


def snakemake_command(workdir: Path, config: dict, *args: str, configfile: Path | None = None) -> list[str]:
    """The command that runs the repository's workflow in `workdir` with `config`, written here to
    `configfile` (default workdir/config.yaml)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = configfile or workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", str(cfg), *args]


def snakemake(workdir: Path, config: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the repository's workflow in `workdir` with `config` written to workdir/config.yaml."""
    cmd = snakemake_command(workdir, config, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The job-stats table of a dry run: {rule: count, "total": n} (empty when nothing is to be done)."""
    return {
        line.split()[0]: int(line.split()[1])
        for line in dry_run_output.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }


def artefacts(workdir: Path) -> dict[str, bytes]:
    """Every file under results/ (relative path -> bytes)."""
    root = workdir / "results"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# What holds wall-clock facts, never compared between runs: TensorBoard event files (their names and
# records), checkpoints/inputs.txt (the shards' file times, the resume guard) and
# checkpoints/epoch_seconds.json (epoch durations, for the deadline).
WALL_CLOCK = ("checkpoints/inputs.txt", "checkpoints/epoch_seconds.json")


def comparable(paths) -> set[str]:
    """The artefact paths compared byte for byte between two runs (all but WALL_CLOCK files)."""
    return {k for k in paths if "/tb/" not in k and not k.endswith(WALL_CLOCK)}
