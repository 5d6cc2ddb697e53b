"""GPU ids for concurrent jobs on a workstation (cocon.workflow.gpus), on CPU with fake GPU ids (COCON_GPU_IDS):
real processes, real flocks, a real snakemake run that starts more GPU jobs at once than there are GPUs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cocon.workflow import gpus

pytestmark = pytest.mark.slow  # real snakemake jobs claiming GPU ids

REPO = Path(__file__).resolve().parents[1]
WRAP = [sys.executable, "-m", "cocon.workflow.gpus"]
REPORT = (
    "import json, os, sys, time; t0 = time.time(); time.sleep(float(sys.argv[2])); "
    "ids = os.environ['CUDA_VISIBLE_DEVICES']; "
    "json.dump({'ids': ids, 'start': t0, 'end': time.time()}, open(sys.argv[1], 'w'))"
)


def env(tmp_path: Path, ids: str = "0,1", **extra) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    return {**e, "COCON_GPU_IDS": ids, "COCON_GPU_LOCK_DIR": str(tmp_path / "locks"), "PYTHONPATH": str(REPO), **extra}


def test_concurrent_snakemake_jobs_get_disjoint_gpus(tmp_path):
    """5 jobs needing 1 or 2 GPUs, snakemake allowed to run them all at once (--resources gpu=10), 3 GPUs:
    jobs whose runs overlap never share a GPU; the ones that do not fit wait until a claim is released."""
    needs = {"a": 1, "b": 2, "c": 1, "d": 1, "e": 2}
    PY = sys.executable  # noqa: N806
    (tmp_path / "report.py").write_text(REPORT)
    (tmp_path / "Snakefile").write_text(
        textwrap.dedent(f"""
        NEEDS = {needs!r}

        rule all:
            input: expand("out/{{job}}.json", job=NEEDS)

        rule gpu_job:
            output: "out/{{job}}.json"
            log: "logs/{{job}}.log"
            resources: gpu=lambda w: NEEDS[w.job]
            shell: "{PY} -m cocon.workflow.gpus {{resources.gpu}} -- {PY} report.py {{output}} 1.5 2> {{log}}"
    """)
    )
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        "5",
        "--resources",
        "gpu=10",
        "-d",
        str(tmp_path),
        "-s",
        str(tmp_path / "Snakefile"),
    ]
    proc = subprocess.run(cmd, env=env(tmp_path, "0,1,2"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {j: json.loads((tmp_path / "out" / f"{j}.json").read_text()) for j in needs}
    for j, r in runs.items():
        ids = r["ids"].split(",")
        assert len(ids) == needs[j] and len(set(ids)) == needs[j] and set(ids) <= {"0", "1", "2"}
    overlapping = [
        (a, b)
        for a in runs
        for b in runs
        if a < b and runs[a]["start"] < runs[b]["end"] and runs[b]["start"] < runs[a]["end"]
    ]
    assert overlapping, "no two jobs ran at the same time"
    for a, b in overlapping:
        assert not set(runs[a]["ids"].split(",")) & set(runs[b]["ids"].split(",")), (a, b, runs)
    # 7 GPUs' worth of jobs on 3 GPUs: someone waited
    logs = "".join((tmp_path / "logs" / f"{j}.log").read_text() for j in needs)
    assert "waiting for" in logs and logs.count("this job uses GPU(s)") == len(needs)


def test_claim_is_released_when_the_job_is_killed(tmp_path):
    e = env(tmp_path)
    proc = subprocess.Popen([*WRAP, "2", "--", "sleep", "60"], env=e, stderr=subprocess.PIPE, text=True)
    try:
        assert "uses GPU(s) 0,1" in proc.stderr.readline()  # printed once both claims are held
        time.sleep(0.5)
        assert gpus.try_claim(1, ["0", "1"], e["COCON_GPU_LOCK_DIR"]) is None  # held by `sleep`, after the exec
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    got = gpus.try_claim(2, ["0", "1"], e["COCON_GPU_LOCK_DIR"])
    assert got is not None and got[0] == ["0", "1"]
    for fd in got[1]:
        os.close(fd)


def test_waiting_job_starts_when_a_claim_is_released(tmp_path):
    e = env(tmp_path, "0")
    holder = gpus.try_claim(1, ["0"], e["COCON_GPU_LOCK_DIR"])
    assert holder is not None
    t0 = time.monotonic()
    show = [sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"]
    proc = subprocess.Popen([*WRAP, "1", "--", *show], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    assert proc.poll() is None  # still waiting
    os.close(holder[1][0])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.strip() == "0" and "waiting for 1 free GPU(s) of 0" in err
    assert time.monotonic() - t0 >= 2.0


def test_no_gpus_hides_them_and_slurm_jobs_keep_theirs(tmp_path):
    show = [sys.executable, "-c", "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"]
    zero = subprocess.run([*WRAP, "0", "--", *show], env=env(tmp_path), capture_output=True, text=True, check=True)
    assert zero.stdout.strip() == "''"
    slurm_env = env(tmp_path, SLURM_JOB_ID="7", CUDA_VISIBLE_DEVICES="3,5")  # SLURM gave the job GPUs 3 and 5
    in_slurm = subprocess.run([*WRAP, "2", "--", *show], env=slurm_env, capture_output=True, text=True, check=True)
    assert in_slurm.stdout.strip() == "'3,5'" and not (tmp_path / "locks").exists()
    no_gpu = {k: v for k, v in env(tmp_path).items() if k != "COCON_GPU_IDS"}
    no_gpu["PATH"] = os.path.dirname(sys.executable)  # no nvidia-smi: a CPU machine
    cpu = subprocess.run([*WRAP, "1", "--", *show], env=no_gpu, capture_output=True, text=True, check=True)
    assert cpu.stdout.strip() == "None"
    too_many = subprocess.run([*WRAP, "3", "--", "true"], env=env(tmp_path), capture_output=True, text=True)
    assert too_many.returncode != 0 and "asks for 3 GPUs, this machine has 2" in too_many.stderr


def test_visible_devices_restrict_the_ids(tmp_path):
    e = {k: v for k, v in env(tmp_path).items() if k != "COCON_GPU_IDS"}
    assert gpus.machine_gpu_ids({**e, "CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert gpus.machine_gpu_ids({**e, "COCON_GPU_IDS": "1", "CUDA_VISIBLE_DEVICES": "2,3"}) == ["1"]
