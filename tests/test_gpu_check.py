"""The parts of bench/gpu_check.py that need no GPU: the no-GPU exit, the tier's per-test events plugin, a
part's time limit, and the reports built from benchmark results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "bench"))  # as `python bench/gpu_check.py` finds its modules
import gpu_check  # noqa: E402
import gpu_check_events  # noqa: E402
import gpu_report  # noqa: E402


def test_without_a_gpu_it_stops_at_once_with_one_line(tmp_path):
    """CUDA hidden: exit status 3, exactly one line on stderr (no traceback), nothing on stdout, no folder;
    from a plain checkout (only the venv's packages, any cwd)."""
    out = tmp_path / "check"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == gpu_check.NO_GPU_EXIT == 3
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench/gpu_check.py: no GPU present: "), proc.stderr
    assert proc.stdout == "" and not out.exists()


def test_the_tier_records_each_test_through_the_events_plugin(tmp_path):
    """The tier's pytest command line loads the plugin by name with bench/ on PYTHONPATH: one JSON line per
    test phase, read back as one outcome per test."""
    (tmp_path / "test_x.py").write_text(
        "import pytest\n\ndef test_ok():\n    pass\n\ndef test_bad():\n    assert 0\n\n"
        "@pytest.mark.skip(reason='no mm')\ndef test_skip():\n    pass\n"
    )
    events = tmp_path / "events.jsonl"
    part = [p for p in gpu_check.plan(tmp_path, tmp_path, ["tests"]) if p["name"] == "tests"][0]
    assert part["cmd"][part["cmd"].index("-p") + 1] == "gpu_check_events"
    env = {**os.environ, **part["env"], gpu_check_events.EVENTS_ENV: str(events)}
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "gpu_check_events", "-p", "no:cacheprovider", "test_x.py"],
        cwd=tmp_path,
        capture_output=True,
        env=env,
        timeout=300,
    )
    outcomes = {t["name"]: t["outcome"] for t in gpu_check_events.tests_from_events(events)}
    assert outcomes == {
        "test_x.py::test_ok": "passed",
        "test_x.py::test_bad": "failed",
        "test_x.py::test_skip": "skipped",
    }


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's exit status may stay unreaped in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_part_past_its_limit_is_stopped_with_its_children(tmp_path):
    """A part that outlasts its limit: status timeout, and its whole process group (here a child that
    ignores SIGTERM) is gone afterwards; its output is in the log."""
    pid_file = tmp_path / "child.pid"
    code = (
        "import os, signal, subprocess, sys, time; print('started', flush=True); "
        "c = subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, "
        "signal.SIG_IGN); time.sleep(600)']); "
        f"open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(600)"
    )
    part = {
        "name": "slow",
        "what": "sleeps",
        "cmd": [sys.executable, "-c", code],
        "env": {},
        "json": str(tmp_path / "slow.json"),
        "stdout_json": False,
    }
    log = tmp_path / "log.txt"
    t0 = time.monotonic()
    res = gpu_check.run_part(part, 3.0, log, dict(os.environ))
    assert res["status"] == "timeout" and time.monotonic() - t0 < 3.0 + gpu_check.STOP_GRACE_S + 20
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while alive(child):
        assert time.monotonic() < deadline, f"child {child} still running"
        time.sleep(0.1)
    assert "started" in log.read_text() and "slow: timeout" in log.read_text()


def test_report_puts_every_figure_beside_its_goal(tmp_path):
    """Benchmark results (as bench/tvl1.py, bench/train_step.py and bench/pose_seg.py write them on CUDA) and
    the per-test events of a tier stopped during its third test -> figures with goals and met flags, and a
    markdown report that shows them."""
    results = {
        "tvl1": {
            "threads": 16,
            "agreement": {"size": "320x240", "epe_torch_vs_opencv_px": {"mean": 0.02}, "goal_epe_px": 0.5},
            "speed": [
                {
                    "size": "320x240",
                    "opencv_pairs_s": 10.0,
                    "goal_cuda_pairs_s": 1000,
                    "torch_cuda": [
                        {"batch": 256, "compile": "on", "pairs_s": 1250.0, "peak_mem_mib": 900.0},
                        {"batch": 256, "compile": "off", "pairs_s": 400.0, "peak_mem_mib": 800.0},
                        {"batch": 1, "compile": "on", "error": "RuntimeError: boom"},
                    ],
                },
                {
                    "size": "171x128",
                    "opencv_pairs_s": 30.0,
                    "torch_cuda": [{"batch": 256, "compile": "on", "pairs_s": 3000.0, "peak_mem_mib": 300.0}],
                },
            ],
        },
        "train_step": {
            "goal": {"ratio_vs_baseline": 2.0},
            "best": {"variant": "bf16", "ratio_vs_baseline": 1.6, "goal_met": False},
            "variants": {
                "fp32_eager": {"clips_per_s": 10.0, "peak_mem_mib": 5000.0},
                "bf16": {
                    "clips_per_s": 16.0,
                    "peak_mem_mib": 3000.0,
                    "ratio_vs_baseline": 1.6,
                    "loss_equal": True,
                    "loss_max_rel_diff": 0.01,
                    "loss_tolerance": 0.05,
                },
                "bf16+compile": {"error": "first step not finished within the cap", "capped": True},
            },
        },
        "pose_seg": {
            "runs": [
                {
                    "models": "default",
                    "view": "seg",
                    "config": "segformer",
                    "api_fps": 20.0,
                    "stage_fps_b1": 18.0,
                    "stage_fps_b32": 60.0,
                }
            ]
        },
    }
    events = tmp_path / "events.jsonl"
    lines = [
        {"event": "start", "test": "t.py::a"},
        {"event": "setup", "test": "t.py::a", "outcome": "passed", "seconds": 0.1},
        {"event": "call", "test": "t.py::a", "outcome": "passed", "seconds": 2.0},
        {"event": "start", "test": "t.py::b"},
        {"event": "setup", "test": "t.py::b", "outcome": "skipped", "seconds": 0.0, "message": "no mm"},
        {"event": "start", "test": "t.py::c"},
        {"event": "setup", "test": "t.py::c", "outcome": "passed", "seconds": 0.2},
    ]
    events.write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = {
        "status": "failed",
        "started": "now",
        "timeout_s": 480.0,
        "wall_s": 100.0,
        "environment": {},
        "parts": [],
        "tests": None,
        "benchmarks": {},
        "figures": [],
    }
    for name, result in results.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
        entry = {"name": name, "what": name, "status": "ok", "rc": 0, "wall_s": 1.0, "limit_s": 9.0, "skip": None}
        report["parts"].append(entry)
        gpu_check.collect(report, {"name": name, "json": str(tmp_path / f"{name}.json")}, entry, tmp_path, time.time())
    tier = {"name": "tests", "what": "tier", "status": "timeout", "rc": -9, "wall_s": 9.0, "limit_s": 9.0, "skip": None}
    report["parts"].insert(0, tier)
    gpu_check.collect(
        report, {"name": "tests", "env": {gpu_check_events.EVENTS_ENV: str(events)}}, tier, tmp_path, time.time()
    )

    t = report["tests"]
    assert (t["passed"], t["skipped"], t["running"], t["failed"]) == (1, 1, 1, 0) and "events" in t["source"]
    figs = {f["name"]: f for f in report["figures"]}
    goal = figs["TVL1 torch CUDA pairs/s at 320x240 (best: batch 256, compile on)"]
    assert (goal["value"], goal["goal"], goal["met"]) == (1250.0, ">= 1000 pairs/s", True)
    assert figs["TVL1 at 320x240: best compiled / best eager"]["value"] == 3.12
    assert figs["TVL1 torch CUDA pairs/s at 171x128 (best: batch 256, compile on)"]["goal"] is None
    best = figs["training step clips/s, best setting (bf16) / fp32 eager"]
    assert (best["value"], best["goal"], best["met"]) == (1.6, ">= 2.0x", False)
    assert figs["training step bf16+compile"]["note"].startswith("first step not finished")
    seg = [f for f in report["figures"] if f["part"] == "pose_seg"][0]
    assert seg["value"] == 60.0 and seg["met"] is True and "batch 32" in seg["name"]

    md = gpu_report.markdown(report)
    assert (
        "| TVL1 torch CUDA pairs/s at 320x240 (best: batch 256, compile on) | 1,250 pairs/s | >= 1000 pairs/s | yes |"
        in md
    )
    assert "| training step clips/s, best setting (bf16) / fp32 eager | 1.6 x | >= 2.0x | no |" in md
    assert "| t.py::c | running |" in md and "RuntimeError: boom" in md
