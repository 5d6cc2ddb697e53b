"""Training over several nodes, on CPU with gloo: a 2-node x 1-process run (two copies of `cocon train`, as
`cocon launch` starts one per node, joined by torchrun's c10d rendezvous) equals a 1-node x 2-process run
(torchrun --standalone) of the same CPC and CoCon training, step by step and in its final weights; killed
on both nodes and run again, it resumes exactly. Outside SLURM, a multi-node launch is a clear error."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from cocon.train.checkpoints import load_checkpoint
from cocon.workflow.launch import NotInSlurmJob, rendezvous_port, srun_command

from conftest import REPO
from training_data import free_port, tiny_config, tiny_shards_dir  # noqa: F401  (tiny_shards_dir: the shards_dir fixture)

pytestmark = pytest.mark.slow  # several torchrun agents and DDP processes

VIEWS = ["rgb", "flow_tvl1"]


def _config(tmp_path: Path, shards: Path, **sections) -> Path:
    """A whole config file: tiny networks, 4 clips per step (2 per process), 3 epochs of 1 step each per stage."""
    cfg = tiny_config(
        shards,
        cpc={"epochs": 3, "max_steps_per_epoch": 1, "batch_size": 4, **sections.get("cpc", {})},
        cocon={"epochs": 2},
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train_args(method: str, views: list[str], out: Path, config: Path, init: dict | None = None) -> list[str]:
    inits = [f"--init={v}={p}" for v, p in (init or {}).items()]
    return ["-m", "cocon", "train", method, "--views", *views, *inits, "--out", str(out), "--config", str(config)]


def _env(**extra) -> dict:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COCON_", "SLURM_"))}
    return {**env, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def one_node_two_processes(method, views, out, config, init=None) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += _train_args(method, views, out, config, init)[1:]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def two_nodes(method, views, out, config, init=None) -> list[subprocess.Popen]:
    """Two copies of the command, as `cocon launch` starts them on two nodes (one task each)."""
    env = _env(COCON_NODES="2", COCON_RENDEZVOUS=f"127.0.0.1:{free_port()}", COCON_RUN_ID=f"test{time.time_ns()}")
    cmd = [sys.executable, *_train_args(method, views, out, config, init)]
    logs = [open(out.parent / f"{out.name}.node{k}.log", "w") for k in range(2)]  # noqa: SIM115
    return [
        subprocess.Popen(
            cmd, env={**env, "SLURMD_NODENAME": f"node{k}"}, stdout=log, stderr=log, start_new_session=True
        )
        for k, log in enumerate(logs)
    ]


def wait(procs: list[subprocess.Popen], timeout: float = 600) -> None:
    for p in procs:
        assert p.wait(timeout=timeout) == 0


def assert_same_run(a: Path, b: Path) -> None:
    ka, kb = load_checkpoint(a / "model.pt"), load_checkpoint(b / "model.pt")
    assert ka["history"] == kb["history"]  # every epoch is one step: the losses of every step
    assert ka["models"].keys() == kb["models"].keys()
    for view in ka["models"]:
        for name, t in ka["models"][view].items():
            assert kb["models"][view][name].equal(t), f"{view} {name}"  # tolerance 0: the same arithmetic
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()


def test_two_nodes_equal_one_node_with_two_processes(shards_dir, tmp_path):
    config = _config(tmp_path, shards_dir)
    one, two = tmp_path / "one_node", tmp_path / "two_nodes"
    for base in (one, two):
        base.mkdir()
    # the runs that do not depend on each other side by side (each waits for its peers at every step)
    nodes = two_nodes("cpc", ["rgb"], two / "cpc_rgb", config)
    with ThreadPoolExecutor(2) as pool:
        rgb = pool.submit(one_node_two_processes, "cpc", ["rgb"], one / "cpc_rgb", config)
        flow = pool.submit(one_node_two_processes, "cpc", ["flow_tvl1"], one / "cpc_flow", config)
        rgb.result(), flow.result()
    wait(nodes)
    assert_same_run(one / "cpc_rgb", two / "cpc_rgb")
    log = (two / "cpc_rgb.node0.log").read_text() + (two / "cpc_rgb.node1.log").read_text()
    assert "2 process(es)" in log and "node0 rank" in log and "node1 rank" in log  # one process on each node
    # stage 2 from each run's own rgb model and one flow_tvl1 model (trained once, as the init only)
    stage1 = lambda base: {"rgb": base / "cpc_rgb" / "model.pt", "flow_tvl1": one / "cpc_flow" / "model.pt"}  # noqa: E731
    nodes = two_nodes("cocon", VIEWS, two / "cocon", config, stage1(two))
    one_node_two_processes("cocon", VIEWS, one / "cocon", config, stage1(one))
    wait(nodes)
    assert_same_run(one / "cocon", two / "cocon")


def test_a_killed_two_node_run_resumes_exactly(shards_dir, tmp_path):
    config = _config(tmp_path, shards_dir, cpc={"epochs": 6})
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    procs = two_nodes("cpc", ["rgb"], killed, config)
    with ThreadPoolExecutor(1) as pool:  # the uninterrupted run beside the one to kill
        uninterrupted = pool.submit(one_node_two_processes, "cpc", ["rgb"], straight, config)
        last = killed / "checkpoints" / "last.pt"
        deadline = time.monotonic() + 300
        while not last.exists() and time.monotonic() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.05)
        for p in procs:  # both nodes, every process (torchrun agents and workers)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        assert last.exists() and not (killed / "model.pt").exists(), "killed too late: give the run more epochs"
        wait(two_nodes("cpc", ["rgb"], killed, config))
        uninterrupted.result()
    log = (tmp_path / "killed.node0.log").read_text() + (tmp_path / "killed.node1.log").read_text()
    assert "resumed from" in log
    assert_same_run(straight, killed)


def test_a_multi_node_launch_outside_slurm_is_a_clear_error():
    with pytest.raises(NotInSlurmJob, match="runtime.nodes is 2.*only inside a SLURM job"):
        srun_command(2, 4, 8, ["python", "-m", "cocon", "train"], env={})
    cmd = srun_command(2, 4, 8, ["python", "-m", "cocon", "train"], env={"SLURM_JOB_ID": "123456"})
    assert cmd[:6] == [
        "srun",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=8",
        "--gpus-per-node=4",
        "--kill-on-bad-exit=1",
    ]
    assert (
        f"COCON_RENDEZVOUS={socket.gethostname()}:{rendezvous_port('123456')}" in cmd[6] and "COCON_NODES=2" in cmd[6]
    )
    assert 20000 <= rendezvous_port("123456") < 60000
    proc = subprocess.run(
        [sys.executable, "-m", "cocon", "launch", "--nodes", "2", "--", "true"],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "only inside a SLURM job" in proc.stderr
