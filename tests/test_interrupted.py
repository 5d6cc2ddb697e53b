"""A workflow killed mid-job (Snakemake and the job, SIGKILL, as when a node dies): nothing it leaves is
accepted as complete, and `--unlock` + a rerun finish the job from its last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import yaml

from cocon.train.checkpoints import load_checkpoint

from workflow_runs import REPO, SNAKEMAKE, TINY, job_counts, snakemake

pytestmark = pytest.mark.slow  # snakemake killed and resumed

# width 64: epochs long enough to kill the job after its first checkpoint
CFG = {
    **TINY,
    "shards": {"videos_per_shard": 8},
    "train": {**TINY["train"], "width": 64},
    "cpc": {**TINY["cpc"], "epochs": 4},
}
TARGET = "results/train/cpc/rgb/model.pt"


def test_killed_training_job_leaves_nothing_complete_and_resumes(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CFG))
    cmd = [
        *SNAKEMAKE,
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(tmp_path),
        "--configfile",
        str(tmp_path / "config.yaml"),
        "--cores",
        "2",
        TARGET,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    out = tmp_path / "results" / "train" / "cpc" / "rgb"
    deadline = time.monotonic() + 300
    try:
        while not (out / "checkpoints" / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be killed"
        assert not (out / "model.pt").exists(), "training finished before it could be killed; give it more epochs"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # snakemake and the training job
        proc.wait()
    # only checkpoints remain: no model.pt or metrics.csv, which are what Snakemake and the next stage read
    assert not (out / "model.pt").exists() and not (out / "metrics.csv").exists()
    assert (out / "checkpoints" / "last.pt").exists()
    # the dead run's lock stays until `--unlock`; then Snakemake sees the job as still to do
    snakemake(tmp_path, CFG, "--unlock")
    assert job_counts(snakemake(tmp_path, CFG, "-n", "--cores", "2", TARGET).stdout).get("cpc") == 1
    snakemake(tmp_path, CFG, "--cores", "2", "--rerun-incomplete", TARGET)
    assert "resumed from" in (tmp_path / "logs" / "train" / "cpc_rgb.log").read_text()
    ck = load_checkpoint(out / "model.pt")
    assert [h["epoch"] for h in ck["history"]] == list(range(CFG["cpc"]["epochs"]))
