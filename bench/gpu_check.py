"""`python bench/gpu_check.py --out DIR [--timeout-s 480] [--parts ...]`: the GPU test tier and every GPU
benchmark in one command, for a freshly started GPU machine (BENCHMARKS.md, "GPU check").

Without CUDA it stops at once, having imported nothing but torch: exit status 3, one line on stderr,
DIR not created. With CUDA the parts run one after the other, each in a process group of its own with its
own time limit, all within --timeout-s seconds (default 480). A part that fails or outlasts its limit is
recorded as such (SIGTERM, then SIGKILL to its group) and the next one runs; a part is skipped with less
than MIN_PART_S seconds left.

  tests       python -m pytest -m gpu tests (tests/test_gpu.py), JUnit XML in DIR/tests.xml, and each
              test's outcome as it happens (gpu_check_events), so a tier stopped at its limit still says
              which tests passed and which one was running
  tvl1        bench/tvl1.py --device cuda: TVL1 pairs/s at 320x240 (goal >= 1000) and 171x128
  train_step  bench/train_step.py --device cuda: clips/s of a CoCon training step, fp32 eager against
              bf16, channels_last, cudnn.benchmark, fused Adam, torch.compile (goal: best >= 2x)
  pose_seg    bench/pose_seg.py --device cuda: seg and pose frames/s (needs the OpenMMLab stack)
  loader      bench/loader.py --device cuda, only when that script has a --device option

DIR receives gpu_check.json, gpu_check.md (gpu_report), gpu_check.log (every part's output) and
tests.xml; the reports are rewritten after every part. Figures and goals: gpu_goals. Exit status 0 when
every part that ran passed (benchmarks never fail on a timing; a tier in which no test passed has
failed), 1 otherwise, 3 without a GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _dir in (REPO, BENCH):  # cocon from this checkout (as in the other bench scripts), the modules beside this one
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))
from gpu_check_events import EVENTS_ENV, summarise_tests, tests_from_events, tests_from_junit  # noqa: E402
from gpu_goals import FIGURES, figure, read_json  # noqa: E402
from gpu_report import write_reports  # noqa: E402

PROG = "bench/gpu_check.py"
NO_GPU_EXIT = 3
DEFAULT_TIMEOUT_S = 480.0
MIN_PART_S = 20.0  # a part is not started with less time than this left
REPORT_RESERVE_S = 5.0  # kept back from the budget for writing the reports
STOP_GRACE_S = 10.0  # SIGTERM -> SIGKILL
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
    tests = REPO / "tests"
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
            "gpu_check_events",
            "-p",
            "no:cacheprovider",
            f"--junitxml={out / 'tests.xml'}",
            "-o",
            "junit_family=xunit2",
            "--continue-on-collection-errors",
            str(tests),
        ],
        skip=None if tests.is_dir() else f"no {tests}",
        env={EVENTS_ENV: str(scratch / "tests.jsonl"), "PYTHONPATH": python_path(BENCH, REPO)},  # the plugin
    )
    add(
        "tvl1",
        "TVL1 torch backend on CUDA: pairs/s by size, batch and compile; peak memory",
        110.0,
        [
            py,
            str(BENCH / "tvl1.py"),
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
    )
    add(
        "train_step",
        "CoCon training step on CUDA: fp32 eager vs bf16, channels_last, cudnn.benchmark, fused Adam, torch.compile",
        150.0,
        [
            py,
            str(BENCH / "train_step.py"),
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
    )
    missing_mm = [m for m in ("mmcv", "mmengine", "mmpose", "mmseg") if not _importable(m)]
    add(
        "pose_seg",
        "pose and seg stages on CUDA: frames/s by batch size",
        100.0,
        [
            py,
            str(BENCH / "pose_seg.py"),
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
        skip=f"the OpenMMLab stack is not installed ({', '.join(missing_mm)} missing; docs/pose_seg.md, Install)"
        if missing_mm
        else None,
    )
    loader = BENCH / "loader.py"
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


def python_path(*dirs: Path) -> str:
    """PYTHONPATH for a part: `dirs` first (cocon from this checkout), then the caller's PYTHONPATH."""
    return os.pathsep.join([*map(str, dirs), *filter(None, [os.environ.get("PYTHONPATH")])])


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


# ------------------------------------------------------------------------------------------ collecting


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
        prog=PROG,
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
        print(f"{PROG}: no GPU present: {reason}; nothing was run", file=sys.stderr)
        return NO_GPU_EXIT

    t0, started_at = time.monotonic(), time.time()
    deadline = t0 + a.timeout_s
    scale = max(1.0, a.timeout_s / DEFAULT_TIMEOUT_S)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "gpu_check.log"
    log_path.write_text(f"{PROG} {time.strftime('%Y-%m-%d %H:%M:%S')}\n", encoding="utf-8")
    (out / "tests.xml").unlink(missing_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="cocon-gpu-check-"))
    # the rules' `python -m cocon ...` and any `python` a test starts must be this interpreter
    shim = scratch / "bin"
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shim / "python").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": python_path(REPO),
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
        "command": [PROG, *(sys.argv[1:] if argv is None else argv)],
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
    print(f"{PROG}: {report['status']} in {report['wall_s']:.0f} s; {out / 'gpu_check.md'}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
