"""`cocon gpu-check --out DIR [--timeout-s 480] [--parts ...]`: the GPU test tier and every GPU benchmark in
one command, for a freshly started GPU machine (BENCHMARKS.md, "GPU check").

Without CUDA (torch.cuda.is_available() false) it stops at once, having imported nothing but torch:
exit status 3 and one line on stderr, and DIR is not created.

With CUDA, the parts run one after the other, each in a subprocess of its own (own process group) with
its own time limit, all within --timeout-s seconds (default 480: 8 minutes on one H100/H200). A part that
fails or outlasts its limit is recorded as such (its process group is sent SIGTERM, then SIGKILL) and the
next part runs; a part is skipped when less than MIN_PART_S seconds are left.

  tests       python -m pytest -m gpu tests: the GPU test tier (tests/test_gpu.py), JUnit XML in DIR/tests.xml;
              every test's outcome is also recorded as it happens, so a tier stopped at its limit still says
              which tests passed and which one was running
  tvl1        bench/tvl1.py --device cuda: TVL1 pairs/s at 320x240 (goal >= 1000) and 171x128, batch sizes,
              compile on/off, peak GPU memory
  train_step  bench/train_step.py --device cuda: clips/s of a CoCon training step, fp32 eager against bf16,
              channels_last, cudnn.benchmark, fused Adam and torch.compile (goal: best >= 2x fp32 eager)
  pose_seg    bench/pose_seg.py --device cuda: seg and pose frames/s by batch size (default and demo models;
              needs the OpenMMLab stack)
  loader      bench/loader.py --device cuda, only when that script has a --device option

DIR receives four files: gpu_check.json (environment: GPU, driver, CUDA, torch, code revision; the test
results per test; every benchmark's full JSON; every figure beside its goal, met or not; each part's
status, limit and wall time; the total wall time), gpu_check.md (the same as tables), gpu_check.log (every
part's output, in order) and tests.xml. The two reports are rewritten after every part, so a check stopped
from outside still leaves what was done. Exit status: 0 when every part that ran passed (benchmarks
never fail on a timing; a tier in which no test passed has failed), 1 otherwise, 3 without a GPU.

This module is also a pytest plugin (`-p cocon.workflow.gpu_check`): with COCON_GPU_CHECK_EVENTS set it
appends one JSON line per test phase to that file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

NO_GPU_EXIT = 3
DEFAULT_TIMEOUT_S = 480.0
MIN_PART_S = 20.0  # a part is not started with less time than this left
REPORT_RESERVE_S = 5.0  # kept back from the budget for writing the reports
STOP_GRACE_S = 10.0  # SIGTERM -> SIGKILL
EVENTS_ENV = "COCON_GPU_CHECK_EVENTS"
REPO = Path(__file__).resolve().parents[2]
# the training-step variants, a ladder from the fp32 eager baseline (each adds one setting) to everything
TRAIN_VARIANTS = [
    "fp32_eager",
    "bf16",
    "bf16+channels_last",
    "bf16+channels_last+cudnn_benchmark",
    "bf16+channels_last+cudnn_benchmark+fused_adam",
    "bf16+channels_last+compile+cudnn_benchmark+fused_adam",
]
PARTS = ("tests", "tvl1", "train_step", "pose_seg", "loader")


# ------------------------------------------------------------------------------------------ no GPU


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the check (one line), or None when torch sees a CUDA device."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch

            if torch.cuda.is_available():
                return None
    except Exception as exc:  # noqa: BLE001 - any failure to import or query torch means: no usable GPU
        return f"torch cannot be used ({type(exc).__name__}: {exc})".replace("\n", " ")
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device{where}"


# ------------------------------------------------------------------------------------------ environment


def run_quiet(cmd: list[str], timeout: float = 30.0) -> str | None:
    """stdout of a short command, or None when it cannot be run or fails."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def environment() -> dict:
    """GPU(s), driver, CUDA, cuDNN, torch, Python, the cocon code revision and related library versions."""
    import torch

    from cocon.provenance import code_revision, distribution_versions

    env = {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "gpu_count": torch.cuda.device_count(),
        "gpus": [
            {
                "index": i,
                "name": torch.cuda.get_device_name(i),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "code_revision": code_revision(),
        "versions": distribution_versions(
            [
                "triton",
                "numpy",
                "h5py",
                "opencv-contrib-python-headless",
                "opencv-python-headless",
                "snakemake",
                "pytest",
                "mmcv",
                "mmcv-lite",
                "mmengine",
                "mmpose",
                "mmsegmentation",
                "mmdet",
            ]
        ),
    }
    smi = run_quiet(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total", "--format=csv,noheader"])
    if smi:
        rows = [[c.strip() for c in line.split(",")] for line in smi.splitlines() if line.strip()]
        env["nvidia_smi"] = [
            {"index": r[0], "name": r[1], "driver_version": r[2], "memory": r[3]} for r in rows if len(r) >= 4
        ]
        env["driver_version"] = env["nvidia_smi"][0]["driver_version"] if env["nvidia_smi"] else None
    else:
        env["nvidia_smi"], env["driver_version"] = None, None
    return env


# ------------------------------------------------------------------------------------------ the parts


def plan(out: Path, scratch: Path, parts: list[str]) -> list[dict]:
    """The parts to run: name, what it measures, its time cap, the command (None: skipped, with `skip`),
    where its JSON result lands (`json`), whether that JSON is its stdout (`stdout_json`)."""
    py = sys.executable
    threads = str(max(1, min(16, os.cpu_count() or 1)))
    bench, tests = REPO / "bench", REPO / "tests"
    out_plan = []

    def add(name, what, cap_s, cmd, skip=None, stdout_json=False, env=None):
        if name in parts:
            out_plan.append(
                {
                    "name": name,
                    "what": what,
                    "cap_s": cap_s,
                    "cmd": None if skip else cmd,
                    "skip": skip,
                    "json": str(scratch / f"{name}.json"),
                    "stdout_json": stdout_json,
                    "env": env or {},
                }
            )

    no_tree = "no tests/ and bench/ beside the package (run gpu-check from a checkout of the repository)"
    add(
        "tests",
        "GPU test tier: python -m pytest -m gpu tests",
        270.0,
        [
            py,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-p",
            "cocon.workflow.gpu_check",
            "-p",
            "no:cacheprovider",
            f"--junitxml={out / 'tests.xml'}",
            "-o",
            "junit_family=xunit2",
            "--continue-on-collection-errors",
            str(tests),
        ],
        skip=None if tests.is_dir() else no_tree,
        env={EVENTS_ENV: str(scratch / "tests.jsonl")},
    )
    add(
        "tvl1",
        "TVL1 torch backend on CUDA: pairs/s by size, batch and compile; peak memory",
        110.0,
        [
            py,
            str(bench / "tvl1.py"),
            "--device",
            "cuda",
            "--sizes",
            "320x240",
            "171x128",
            "--threads",
            threads,
            "--speed-pairs",
            "32",
            "--cuda-batch-sizes",
            "256",
            "128",
            "64",
            "8",
            "1",
            "--compile",
            "on",
            "off",
            "--json",
            str(scratch / "tvl1.json"),
        ],
        skip=None if bench.is_dir() else no_tree,
    )
    add(
        "train_step",
        "CoCon training step on CUDA: fp32 eager vs bf16, channels_last, cudnn.benchmark, fused Adam, torch.compile",
        150.0,
        [
            py,
            str(bench / "train_step.py"),
            "--device",
            "cuda",
            "--steps",
            "10",
            "--warmup",
            "3",
            "--compile-cap",
            "75",
            "--variants",
            *TRAIN_VARIANTS,
            "--json",
            str(scratch / "train_step.json"),
        ],
        skip=None if bench.is_dir() else no_tree,
    )
    missing_mm = [m for m in ("mmcv", "mmengine", "mmpose", "mmseg") if not _importable(m)]
    add(
        "pose_seg",
        "pose and seg stages on CUDA: frames/s by batch size",
        100.0,
        [
            py,
            str(bench / "pose_seg.py"),
            "--device",
            "cuda",
            "--models",
            "default",
            "demo",
            "--frames",
            "64",
            "--batch-sizes",
            "1",
            "32",
            "--threads",
            "4",
            "--json",
            str(scratch / "pose_seg.json"),
        ],
        skip=(
            no_tree
            if not bench.is_dir()
            else f"the OpenMMLab stack is not installed ({', '.join(missing_mm)} missing; docs/pose_seg.md, Install)"
            if missing_mm
            else None
        ),
    )
    loader = bench / "loader.py"
    source = loader.read_text(encoding="utf-8", errors="replace") if loader.is_file() else ""
    has_json = '"--json"' in source
    add(
        "loader",
        "training clips/s fed by the real loader on CUDA (optional: runs last, in the time left)",
        150.0,
        [py, str(loader), "--device", "cuda", *(["--json", str(scratch / "loader.json")] if has_json else [])],
        stdout_json=not has_json,
        skip=None if '"--device"' in source else "bench/loader.py has no --device option (its figures are CPU figures)",
    )
    return out_plan


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def stop(proc: subprocess.Popen) -> None:
    """End a part: SIGTERM to its process group (the benchmarks then stop their own workers, which run in
    sessions of their own), up to STOP_GRACE_S for the part's process to exit, then SIGKILL to whatever is
    left of the group (e.g. a snakemake job or a spawned test process)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if sig == signal.SIGTERM and proc.poll() is not None:
            continue  # the part has ended: only its leftovers, if any, get SIGKILL
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=STOP_GRACE_S if sig == signal.SIGTERM else 30.0)
        except subprocess.TimeoutExpired:
            pass


def run_part(part: dict, limit_s: float, log_path: Path, env: dict) -> dict:
    """Run one part with a time limit; its stderr (and stdout unless it is the JSON result) is appended to
    the log. Returns status ("ok", "failed", "timeout"), rc, wall_s, limit_s and the log's last lines."""
    t0 = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n===== {part['name']}: {part['what']}\n===== limit {limit_s:.0f} s: {' '.join(part['cmd'])}\n")
        log.flush()
        start = log.tell()
    stdout_file = Path(part["json"]) if part["stdout_json"] else None
    with open(log_path, "ab") as log, open(stdout_file or os.devnull, "wb") as so:
        try:
            proc = subprocess.Popen(
                part["cmd"],
                cwd=REPO,
                env={**env, **part["env"]},
                stdin=subprocess.DEVNULL,
                stdout=so if stdout_file else log,
                stderr=log,
                start_new_session=True,
            )
        except OSError as exc:
            return {"status": "failed", "rc": None, "error": f"cannot start: {exc}", "wall_s": 0.0, "limit_s": limit_s}
        rc = status = None
        try:
            rc = proc.wait(timeout=limit_s)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            rc, status = None, "timeout"
        finally:  # also when the check itself is interrupted (SIGINT, SIGTERM): never leave the part running;
            stop(proc)  # after a normal exit this removes any process the part left behind in its group
            rc = proc.returncode if rc is None else rc
    wall = time.monotonic() - t0
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"===== {part['name']}: {status}, exit status {rc}, {wall:.1f} s\n")
    res = {"status": status, "rc": rc, "wall_s": round(wall, 1), "limit_s": round(limit_s, 1)}
    if status != "ok":
        res["log_tail"] = _log_tail(log_path, start)
    return res


def _log_tail(path: Path, start: int, lines: int = 25) -> str:
    with open(path, "rb") as fh:
        fh.seek(start)
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def read_json(path: str | Path) -> dict | None:
    """A benchmark's JSON result (the file, or the last JSON object of a stdout capture), or None."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        start = text.rfind("\n{")
        try:
            return json.loads(text[start + 1 :]) if start >= 0 else None
        except ValueError:
            return None


# ------------------------------------------------------------------------------------------ test results


def tests_from_junit(path: Path) -> list[dict] | None:
    """[{name, outcome (passed/failed/error/skipped), seconds, message}] from a JUnit XML report, or None."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    tests: dict[str, dict] = {}
    rank = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        t = tests.setdefault(name, {"name": name, "outcome": "passed", "seconds": 0.0, "message": ""})
        t["seconds"] = round(t["seconds"] + float(case.get("time") or 0), 2)
        for child in case:
            kind = {"failure": "failed", "error": "error", "skipped": "skipped"}.get(child.tag)
            if kind and rank[kind] >= rank[t["outcome"]]:
                t["outcome"], t["message"] = kind, (child.get("message") or (child.text or "")).strip()[:500]
    return list(tests.values())


def tests_from_events(path: Path) -> list[dict]:
    """The same from the plugin's JSON lines; a test that started and never finished is "running" (the
    tier was stopped during it)."""
    tests: dict[str, dict] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        t = tests.setdefault(ev["test"], {"name": ev["test"], "outcome": "running", "seconds": 0.0, "message": ""})
        if ev["event"] == "start":
            continue
        t["seconds"] = round(t["seconds"] + ev.get("seconds", 0.0), 2)
        if ev["outcome"] == "failed":
            t["outcome"], t["message"] = ("failed" if ev["event"] == "call" else "error"), ev.get("message", "")
        elif ev["outcome"] == "skipped" and t["outcome"] == "running":
            t["outcome"], t["message"] = "skipped", ev.get("message", "")
        elif ev["event"] == "call" and t["outcome"] == "running":
            t["outcome"] = "passed"
    return list(tests.values())


def summarise_tests(tests: list[dict]) -> dict:
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped", "running")}
    return {**counts, "total": len(tests), "tests": tests}


# pytest plugin hooks (-p cocon.workflow.gpu_check): one JSON line per test phase, appended as it ends


def _event(ev: dict) -> None:
    path = os.environ.get(EVENTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(ev) + "\n")


def pytest_runtest_logstart(nodeid, location):
    _event({"event": "start", "test": nodeid})


def pytest_runtest_logreport(report):
    ev = {
        "event": report.when,
        "test": report.nodeid,
        "outcome": report.outcome,
        "seconds": round(float(report.duration), 2),
    }
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        ev["message"] = str(report.longrepr[2])[:500]
    elif report.outcome == "failed":
        ev["message"] = "\n".join(str(report.longreprtext).splitlines()[-5:])[:500]
    _event(ev)


# ------------------------------------------------------------------------------------------ figures


def figure(
    part: str, name: str, value, unit: str, goal: str | None = None, met: bool | None = None, note: str = ""
) -> dict:
    return {"part": part, "name": name, "value": value, "unit": unit, "goal": goal, "met": met, "note": note}


def tvl1_figures(r: dict) -> list[dict]:
    figs = []
    agree = r.get("agreement") or {}
    if "epe_torch_vs_opencv_px" in agree:
        e = agree["epe_torch_vs_opencv_px"]["mean"]
        figs.append(
            figure(
                "tvl1",
                f"TVL1 torch (CUDA) vs OpenCV, mean end-point error at {agree['size']}",
                round(e, 4),
                "px",
                f"<= {agree['goal_epe_px']} px",
                e <= agree["goal_epe_px"],
            )
        )
    for row in r.get("speed", []):
        cuda = [x for x in row.get("torch_cuda") or [] if x.get("pairs_s")]
        if not cuda:
            continue
        best = max(cuda, key=lambda x: x["pairs_s"])
        goal = row.get("goal_cuda_pairs_s")
        figs.append(
            figure(
                "tvl1",
                f"TVL1 torch CUDA pairs/s at {row['size']} (best: batch {best['batch']}, compile {best['compile']})",
                round(best["pairs_s"], 1),
                "pairs/s",
                f">= {goal} pairs/s" if goal else None,
                best["pairs_s"] >= goal if goal else None,
                f"peak GPU memory {best.get('peak_mem_mib', 0):.0f} MiB"
                + ("; torch.compile failed, ran eagerly" if best.get("compile_fell_back") else ""),
            )
        )
        on = [x["pairs_s"] for x in cuda if x["compile"] == "on"]
        off = [x["pairs_s"] for x in cuda if x["compile"] == "off"]
        if on and off:
            figs.append(
                figure("tvl1", f"TVL1 at {row['size']}: best compiled / best eager", round(max(on) / max(off), 2), "x")
            )
        if row.get("opencv_pairs_s"):
            figs.append(
                figure(
                    "tvl1",
                    f"TVL1 at {row['size']}: best torch CUDA / OpenCV on {r.get('threads')} CPU threads",
                    round(best["pairs_s"] / row["opencv_pairs_s"], 1),
                    "x",
                )
            )
    return figs


def train_step_figures(r: dict) -> list[dict]:
    figs = []
    best = r.get("best")
    if best:
        figs.append(
            figure(
                "train_step",
                f"training step clips/s, best setting ({best['variant']}) / fp32 eager",
                best["ratio_vs_baseline"],
                "x",
                f">= {r['goal']['ratio_vs_baseline']}x",
                best.get("goal_met"),
            )
        )
    vs = r.get("variants", {})
    for name, v in vs.items():
        if "ratio_vs_baseline" in v:
            figs.append(
                figure(
                    "train_step",
                    f"training step {name} / fp32 eager",
                    v["ratio_vs_baseline"],
                    "x",
                    note=f"{v['clips_per_s']} clips/s, peak {v['peak_mem_mib']:.0f} MiB",
                )
            )
        elif "error" in v:
            figs.append(figure("train_step", f"training step {name}", None, "", note=v["error"][:200]))
    checked = [v for v in vs.values() if "loss_equal" in v]
    if checked:
        ok = sum(v["loss_equal"] for v in checked)
        figs.append(
            figure(
                "train_step",
                "variants whose losses equal fp32 eager's (first 2 steps)",
                f"{ok}/{len(checked)}",
                "",
                "all, within 1e-3 (fp32) / 5e-2 (bf16) relative",
                ok == len(checked),
            )
        )
    return figs


def pose_seg_figures(r: dict) -> list[dict]:
    figs = []
    for row in r.get("runs", []):
        rates = {k: v for k, v in row.items() if k.startswith("stage_fps_b")}
        if not rates:
            continue
        k = max(rates, key=rates.get)
        figs.append(
            figure(
                "pose_seg",
                f"{row['view']} on CUDA, {row['models']} model ({row['config']}): frames/s, best "
                f"batch {k.removeprefix('stage_fps_b')}",
                rates[k],
                "frames/s",
                f">= the one-frame API ({row['api_fps']} frames/s)",
                rates[k] >= row["api_fps"],
            )
        )
    return figs


def loader_figures(r: dict) -> list[dict]:
    """bench/loader.py --device cuda: real-loader clips/s over memory-fed clips/s (read defensively: that script
    is not part of this check's contract)."""
    ct = r.get("cuda_training") or {}
    figs = []
    for key, v in ct.items():
        if isinstance(v, dict) and "ratio" in v:
            goal = ct.get("goal")
            figs.append(
                figure(
                    "loader",
                    f"training clips/s, real loader ({ct.get('workers')} workers, {key}) / memory-fed",
                    v["ratio"],
                    "x",
                    f">= {goal}" if goal is not None else None,
                    v.get("goal_met"),
                    f"{v.get('real_clips_per_s')} clips/s",
                )
            )
    return figs


FIGURES = {
    "tvl1": tvl1_figures,
    "train_step": train_step_figures,
    "pose_seg": pose_seg_figures,
    "loader": loader_figures,
}


# ------------------------------------------------------------------------------------------ reports


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return out + [""]


def markdown(report: dict) -> str:
    env = report.get("environment", {})
    rev = env.get("code_revision", {})
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB, sm {g['capability']})" for g in env.get("gpus", [])) or "–"
    lines = [
        f"# GPU check — {report['status']}",
        "",
        f"{report['started']}; total wall time {report.get('wall_s', 0):.0f} s of a {report['timeout_s']:.0f} s budget.",
        "",
        *_table(
            ["", ""],
            [
                ["GPU", gpus],
                ["driver (nvidia-smi)", env.get("driver_version")],
                ["CUDA (torch) / cuDNN", f"{env.get('cuda')} / {env.get('cudnn')}"],
                ["torch", env.get("torch")],
                ["Python", env.get("python")],
                ["CPU cores", env.get("cpu_count")],
                [
                    "code",
                    f"{rev.get('git')}{' (dirty)' if rev.get('dirty') else ''}, source sha256 "
                    f"{str(rev.get('source_sha256'))[:12]}",
                ],
            ],
        ),
    ]
    lines += [
        "## Parts",
        "",
        *_table(
            ["part", "status", "wall s", "limit s", "what"],
            [
                [
                    p["name"],
                    p["status"] + (f" (exit {p['rc']})" if p.get("rc") not in (0, None) else ""),
                    p.get("wall_s"),
                    p.get("limit_s"),
                    p.get("skip") or p["what"] + (f" — {p['error']}" if p.get("error") else ""),
                ]
                for p in report["parts"]
            ],
        ),
    ]
    t = report.get("tests")
    if t:
        lines += [
            "## GPU test tier",
            "",
            f"{t['passed']} passed, {t['failed']} failed, {t['error']} errors, "
            f"{t['skipped']} skipped"
            + (f", {t['running']} stopped while running" if t["running"] else "")
            + f" (source: {t['source']}).",
            "",
            *_table(
                ["test", "outcome", "s", "message"],
                [[x["name"], x["outcome"], x["seconds"], x["message"][:200]] for x in t["tests"]],
            ),
        ]
    lines += ["## Figures and goals", ""]
    figs = report.get("figures", [])
    lines += (
        _table(
            ["figure", "value", "goal", "met", "note"],
            [
                [
                    f["name"],
                    f"{_fmt(f['value'])} {f['unit']}".strip(),
                    f["goal"],
                    f["met"] if f["goal"] else "",
                    f["note"],
                ]
                for f in figs
            ],
        )
        if figs
        else ["(none measured)", ""]
    )
    bench = report.get("benchmarks", {})
    if bench.get("tvl1"):
        rows = [
            [
                row["size"],
                x["compile"],
                x["batch"],
                x.get("pairs_s"),
                x.get("peak_mem_mib"),
                x.get("iterations_per_pair"),
                x.get("error") or ("torch.compile failed: ran eagerly" if x.get("compile_fell_back") else ""),
            ]
            for row in bench["tvl1"].get("speed", [])
            for x in row.get("torch_cuda") or []
        ]
        if rows:
            lines += [
                "## TVL1 on CUDA (bench/tvl1.py)",
                "",
                *_table(["size", "compile", "batch", "pairs/s", "peak MiB", "iterations/pair", "note"], rows),
            ]
    if bench.get("train_step"):
        rows = [
            [
                n,
                v.get("step_s"),
                v.get("clips_per_s"),
                v.get("ratio_vs_baseline"),
                v.get("peak_mem_mib"),
                v.get("loss_max_rel_diff"),
                v.get("loss_tolerance"),
                v.get("compile_s"),
                str(v.get("error", ""))[:120],
            ]
            for n, v in bench["train_step"].get("variants", {}).items()
        ]
        lines += [
            "## Training step on CUDA (bench/train_step.py)",
            "",
            *_table(
                [
                    "variant",
                    "s/step",
                    "clips/s",
                    "vs fp32 eager",
                    "peak MiB",
                    "max rel. loss diff",
                    "tolerance",
                    "compile s",
                    "error",
                ],
                rows,
            ),
        ]
    if bench.get("pose_seg"):
        runs = bench["pose_seg"].get("runs", [])
        keys = sorted({k for r in runs for k in r if k.startswith("stage_fps_b")}, key=lambda k: int(k[11:]))
        lines += [
            "## Pose and seg on CUDA (bench/pose_seg.py)",
            "",
            *_table(
                ["models", "view", "api frames/s", *[f"stage b={k[11:]}" for k in keys]],
                [[r["models"], r["view"], r.get("api_fps"), *[r.get(k) for k in keys]] for r in runs],
            ),
        ]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, report: dict) -> None:
    from cocon.files import write_json, write_text

    write_json(out / "gpu_check.json", report)
    write_text(out / "gpu_check.md", markdown(report))


def collect(report: dict, part: dict, entry: dict, out: Path, started_at: float) -> None:
    """Fold a finished part's results into the report (`entry`: the part's line in report["parts"])."""
    name = part["name"]
    if name == "tests":
        junit = out / "tests.xml"
        tests = tests_from_junit(junit) if junit.exists() and junit.stat().st_mtime >= started_at - 1 else None
        source = "JUnit XML tests.xml"
        if tests is None:
            tests, source = tests_from_events(Path(part["env"][EVENTS_ENV])), "per-test events (no JUnit XML: stopped)"
        report["tests"] = {**summarise_tests(tests), "source": source}
        if entry["status"] == "ok" and not report["tests"]["passed"]:  # none collected, or every one skipped
            entry.update(status="failed", error="no GPU test passed")
        return
    result = read_json(part["json"])
    if result is None:
        return
    report["benchmarks"][name] = result
    if name in FIGURES:
        try:
            report["figures"] += FIGURES[name](result)
        except (KeyError, TypeError, ValueError) as exc:  # a partial result: keep the JSON, say why no figures
            report["figures"].append(figure(name, f"{name}: figures unreadable", None, "", note=repr(exc)[:200]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="cocon gpu-check",
        description="The GPU test tier and every GPU benchmark in one "
        "command, into one JSON and one markdown report (BENCHMARKS.md, 'GPU check').",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    ap.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md, gpu_check.log, tests.xml")
    ap.add_argument(
        "--timeout-s",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"wall-clock budget of all parts together (default {DEFAULT_TIMEOUT_S:.0f} s); each part also has "
        "a cap of its own, scaled up with a budget above the default",
    )
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="run only these parts")
    a = ap.parse_args(argv)

    reason = no_gpu_reason()
    if reason:
        print(f"cocon gpu-check: no GPU present: {reason}; nothing was run", file=sys.stderr)
        return NO_GPU_EXIT

    t0, started_at = time.monotonic(), time.time()
    deadline = t0 + a.timeout_s
    scale = max(1.0, a.timeout_s / DEFAULT_TIMEOUT_S)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "gpu_check.log"
    log_path.write_text(f"cocon gpu-check {time.strftime('%Y-%m-%d %H:%M:%S')}\n", encoding="utf-8")
    (out / "tests.xml").unlink(missing_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="cocon-gpu-check-"))
    # the rules' `python -m cocon ...` and any `python` a test starts must be this interpreter
    shim = scratch / "bin"
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shim / "python").chmod(0o755)
    own = str(REPO) if (REPO / "cocon").is_dir() and (REPO / "tests").is_dir() else ""  # a checkout, not a wheel
    pythonpath = os.pathsep.join(p for p in (own, os.environ.get("PYTHONPATH", "")) if p)
    env = {
        **os.environ,
        "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": pythonpath,
        "PYTHONUNBUFFERED": "1",
    }

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        env_info = environment()
    except Exception as exc:  # noqa: BLE001 - the check runs on without the description of the machine
        env_info = {"error": f"{type(exc).__name__}: {exc}"}
    report = {
        "status": "running",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started_at)),
        "timeout_s": a.timeout_s,
        "command": ["cocon", "gpu-check", *(sys.argv[1:] if argv is None else argv)],
        "environment": env_info,
        "parts": [],
        "tests": None,
        "benchmarks": {},
        "figures": [],
    }
    write_reports(out, report)
    parts = plan(out, scratch, a.parts)
    try:
        for part in parts:
            entry = {**{k: part[k] for k in ("name", "what", "cmd", "skip")}, "status": "running"}
            report["parts"].append(entry)
            left = deadline - time.monotonic() - REPORT_RESERVE_S
            if part["skip"]:
                entry["status"] = "skipped"
            elif left < MIN_PART_S:
                entry.update(status="skipped", skip=f"no time left ({max(left, 0):.0f} s of the budget)")
            else:
                entry.update(run_part(part, min(part["cap_s"] * scale, left), log_path, env))
                collect(report, part, entry, out, started_at)
            report["wall_s"] = round(time.monotonic() - t0, 1)
            write_reports(out, report)
    except BaseException as exc:
        report["status"] = f"interrupted ({type(exc).__name__})"
        for entry in report["parts"]:
            if entry["status"] == "running":
                entry["status"] = "interrupted"
        report["wall_s"] = round(time.monotonic() - t0, 1)
        write_reports(out, report)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ran = [p for p in report["parts"] if p["status"] != "skipped"]
    t = report["tests"]
    ok = all(p["status"] == "ok" for p in ran) and (t is None or not (t["failed"] or t["error"] or t["running"]))
    report["status"] = "passed" if ok else "failed"
    report["wall_s"] = round(time.monotonic() - t0, 1)
    write_reports(out, report)
    print(f"cocon gpu-check: {report['status']} in {report['wall_s']:.0f} s; {out / 'gpu_check.md'}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
