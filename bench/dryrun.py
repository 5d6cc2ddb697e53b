"""Dry-run benchmark: seconds for `snakemake -n` on a Kinetics-400-sized dataset (240k clips, 400
labels, official-style CSVs), against the 60 s goal; also the ingest alone (cocon.sources.ingest.load_dataset).

    python bench/dryrun.py [--videos 240000] [--labels 400] [--videos-per-shard 256] [--cores 2]
                           [--repeats 1] [--plain] [--phases] [--what-if] [--profile] [--analyse]
                           [--keep] [--tmp DIR]

Builds, in a temporary folder under /tmp, kinetics400/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4
as zero-byte files (the dry run only lists and stats them), annotations/train.csv (11/12 of the clips)
and annotations/validate.csv (1/12), header label,youtube_id,time_start,time_end,split,is_cc, and
config.yaml (dataset.format kinetics400, output_dir inside the folder; named config.yaml because the
Snakefile's `configfile: "config.yaml"` is read from the working directory). Then, warm (files just
written):

  ingest     load_dataset(cfg) in this process (config loading excluded), then assign_shards;
             local_path_s: os.path.relpath of every video path, what common.smk's shard_videos
             does per video (cwd = the working directory of the dry run).
  dry run    snakemake -n --quiet rules --cores C -s <repo>/Snakefile --configfile <yaml> -d <tmp>
             in a subprocess, --repeats times (median); job counts from its "Job stats" table.
  --plain    also the dry run without --quiet (prints every job and its inputs, as a user sees it).
  --phases   one more dry run, in-process with wall-clock timers around Snakemake's phases and our
             parse-time functions (little overhead, so the phases add up to the real run).
  --what-if  the dry run of a copy of the workflow whose shard_videos returns [] (the frames jobs
             do not list their 256 videos as inputs): what the per-video inputs cost.
  --profile  one more dry run under cProfile (about 3x slower): Snakemake phases, the workflow's own
             functions (rules/*.smk, cocon/) and the top functions by own time.
  --analyse  all four.

Prints one JSON object. goal_ratio = dry-run seconds / 60 (<= 1 meets the goal, meant for the full
size). Nothing in rules/ or cocon/ is changed; --what-if edits only its copy in the temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from cocon.config import load_config  # noqa: E402
from cocon.sources.ingest import load_dataset  # noqa: E402
from cocon.sources.records import assign_shards  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

GOAL_S = 60.0
HEADER = "label,youtube_id,time_start,time_end,split,is_cc"
YID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# Snakemake functions whose cumulative time names a phase of the dry run in the cProfile report
# (matched on the function name and the end of its file path; missing ones are left out).
PHASES = {
    "parse: Workflow.include (Snakefile, rules/*.smk, common.smk's parse-time code)": ("workflow.py", "include"),
    "DAG.init (DAG build)": ("dag.py", "init"),
    "DAG.update (job graph: new jobs, producers of every input file)": ("dag.py", "update"),
    "DAG.file2jobs (producer lookup per input file)": ("dag.py", "file2jobs"),
    "Job.__init__ (all jobs)": ("jobs.py", "__init__"),
    "Rule.expand_input (input functions, e.g. shard_videos, and IOFile creation)": ("rules.py", "expand_input"),
    "Rule.expand_params": ("rules.py", "expand_params"),
    "DAG.update_conda_envs": ("dag.py", "update_conda_envs"),
    "DAG.update_needrun (existence / mtime inventory)": ("dag.py", "update_needrun"),
    "IOCache save (.snakemake/iocache)": ("persistence/__init__.py", "save_iocache"),
    "JobScheduler.schedule (dry-run job listing)": ("scheduling/job_scheduler.py", "schedule"),
    "Job.log_info (formats every job's inputs, even under --quiet)": ("jobs.py", "log_info"),
}

# Runs snakemake's CLI in-process with wall-clock timers around its phases and our parse-time
# functions; prints one line "COCON_PHASES {json}" to stderr at exit. Per function: incl_s (its
# outermost calls, summed), self_s (minus the time in the other timed functions it calls, so the
# self_s of all rows plus the total's self_s add up to the run). Unlike cProfile it adds almost no
# overhead. 'A > B' in a name: B as called from A.
PHASE_BOOT = r"""
import atexit, inspect, json, sys, time
T0 = time.perf_counter()
import snakemake.cli, snakemake.dag, snakemake.jobs, snakemake.rules, snakemake.workflow
import snakemake.persistence, snakemake.scheduling.job_scheduler
import cocon.sources.ingest, cocon.sources.records
incl, own, depth, calls = {}, {}, {}, {}
stack = []  # [key, seconds spent in timed callees] per active timed call


def enter(key):
    calls[key] += 1
    depth[key] += 1
    frame = [key, 0.0, time.perf_counter()]
    stack.append(frame)
    return frame


def leave(key, frame):
    dt = time.perf_counter() - frame[2]
    if stack and stack[-1] is frame:
        stack.pop()
    else:  # calls interleaved by asyncio: self_s is approximate; say so in the report
        stack.remove(frame)
        calls["interleaved"] = calls.get("interleaved", 0) + 1
    own[key] += dt - frame[1]
    depth[key] -= 1
    if not depth[key]:
        incl[key] += dt
    if stack:
        stack[-1][1] += dt


def wrap(owner, name, key):
    f = getattr(owner, name, None)
    if f is None:
        return
    incl[key], own[key], depth[key], calls[key] = 0.0, 0.0, 0, 0
    if inspect.iscoroutinefunction(f):
        async def w(*a, **k):
            t = enter(key)
            try:
                return await f(*a, **k)
            finally:
                leave(key, t)
    else:
        def w(*a, **k):
            t = enter(key)
            try:
                return f(*a, **k)
            finally:
                leave(key, t)
    setattr(owner, name, w)

D, W = snakemake.dag.DAG, snakemake.workflow.Workflow
for owner, name, key in [
    (W, "include", "parse: Workflow.include"),
    (cocon.sources.ingest, "load_dataset", "parse > cocon.sources.ingest.load_dataset (common.smk)"),
    (cocon.sources.records, "assign_shards", "parse > cocon.sources.records.assign_shards (common.smk)"),
    (W, "_prepare_dag", "Workflow._prepare_dag (persistence, locks)"),
    (D, "init", "DAG.init (DAG build)"),
    (D, "update", "DAG.init > DAG.update (job graph)"),
    (snakemake.rules.Rule, "expand_input",
     "DAG.init > DAG.update > Rule.expand_input (input functions e.g. shard_videos, IOFiles)"),
    (D, "file2jobs", "DAG.init > DAG.update > DAG.file2jobs (producer lookup per input file)"),
    (D, "check_incomplete", "DAG.init > DAG.check_incomplete"),
    (D, "update_conda_envs", "DAG.init > DAG.update_conda_envs"),
    (D, "update_needrun", "DAG.init > DAG.update_needrun (existence, mtime inventory)"),
    (snakemake.persistence.PersistenceBase, "save_iocache", "DAG.init > Persistence.save_iocache"),
    (D, "update_checkpoint_dependencies", "DAG.update_checkpoint_dependencies"),
    (snakemake.scheduling.job_scheduler.JobScheduler, "schedule", "JobScheduler.schedule (dry-run listing)"),
    (snakemake.jobs.Job, "log_info", "JobScheduler.schedule > Job.log_info (formats each job, also under --quiet)"),
]:
    wrap(owner, name, key)

def report():
    total = time.perf_counter() - T0
    out = {k: {"incl_s": round(incl[k], 3), "self_s": round(own[k], 3), "calls": calls[k]} for k in incl}
    out["interleaved_calls"] = calls.get("interleaved", 0)
    top = sum(incl[k] for k in incl if " > " not in k)
    out["total (interpreter start to exit)"] = {"incl_s": round(total, 3), "self_s": round(total - top, 3), "calls": 1}
    sys.stderr.write("COCON_PHASES " + json.dumps(out) + "\n")

atexit.register(report)
sys.argv = ["snakemake"] + ARGS
snakemake.cli.main()
"""


def make_dataset(tmp: Path, n_videos: int, n_labels: int, seed: int) -> dict:
    """Zero-byte videos under root/<label>/ and official-style CSVs; returns counts and seconds."""
    rng = random.Random(seed)
    labels = [f"action {i:03d}" for i in range(n_labels)]  # official label names contain spaces
    root, ann = tmp / "kinetics400", tmp / "annotations"
    ann.mkdir(parents=True)
    for label in labels:
        (root / label).mkdir(parents=True)
    ids: set[str] = set()
    rows = []
    n_val = n_videos // 12
    for i in range(n_videos):
        while True:
            yid = "".join(rng.choice(YID_CHARS) for _ in range(11))
            if yid not in ids:
                ids.add(yid)
                break
        start = rng.randrange(0, 600)
        rows.append((labels[i % n_labels], yid, start, start + 10, "val" if i < n_val else "train", rng.randrange(2)))
    t0 = time.perf_counter()
    for label, yid, start, end, _, _ in rows:
        open(f"{root}/{label}/{yid}_{start:06d}_{end:06d}.mp4", "wb").close()
    create_s = time.perf_counter() - t0
    for name, split in (("train.csv", "train"), ("validate.csv", "val")):
        with open(ann / name, "w", encoding="utf-8") as fh:
            fh.write(HEADER + "\n")
            fh.writelines(f"{lb},{y},{s},{e},{sp},{cc}\n" for lb, y, s, e, sp, cc in rows if sp == split)
    return {
        "root": str(root),
        "manifest": str(ann),
        "videos": n_videos,
        "train_rows": n_videos - n_val,
        "validate_rows": n_val,
        "labels": n_labels,
        "create_files_s": create_s,
    }


def parse_job_stats(text: str) -> dict:
    """The 'Job stats:' table of a dry run -> {rule: count, ..., 'total': n}."""
    out = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "Job stats:":
            for row in lines[i + 1 :]:
                parts = row.split()
                if len(parts) == 2 and parts[1].isdigit():
                    out[parts[0]] = int(parts[1])
                    if parts[0] == "total":
                        break
                elif out:
                    break
    return out


def dry_run_cmd(yaml_path: Path, workdir: Path, cores: int, quiet: bool) -> list[str]:
    cmd = [
        "-n",
        "--cores",
        str(cores),
        "-s",
        str(REPO / "Snakefile"),
        "--configfile",
        str(yaml_path),
        "-d",
        str(workdir),
    ]
    return cmd + (["--quiet", "rules"] if quiet else [])


def run_dry(args: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "snakemake", *args], capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    text = p.stdout + p.stderr
    if p.returncode != 0:
        raise SystemExit(f"snakemake -n failed (exit {p.returncode}):\n{text[-4000:]}")
    return dt, text


def profile_summary(prof: Path, top: int) -> dict:
    """Phases, the workflow's own functions and the top functions by own time, from a cProfile file."""
    st = pstats.Stats(str(prof))
    total = max(v[3] for v in st.stats.values())  # the entry point's cumulative time
    rows = []
    for (file, line, name), (_cc, nc, tt, ct, _callers) in st.stats.items():
        rows.append({"file": file, "line": line, "function": name, "calls": nc, "own_s": tt, "cum_s": ct})

    def short(r):
        f = r["file"]
        for marker in ("site-packages/", str(REPO) + "/"):
            if marker in f:
                f = f.split(marker, 1)[1]
        return f"{f}:{r['line']}({r['function']})"

    phases = {}
    for label, (suffix, name) in PHASES.items():
        hits = [r for r in rows if r["function"] == name and r["file"].endswith("snakemake/" + suffix)]
        if hits:
            best = max(hits, key=lambda r: r["cum_s"])
            phases[label] = {"cum_s": round(best["cum_s"], 3), "calls": best["calls"], "where": short(best)}
    ours = [r for r in rows if r["file"].startswith(str(REPO)) and "/bench/" not in r["file"]]
    ours.sort(key=lambda r: -r["cum_s"])
    by_own = sorted(rows, key=lambda r: -r["own_s"])[:top]
    by_cum = sorted(
        (r for r in rows if "/snakemake/" in r["file"] and r["cum_s"] < total * 0.95), key=lambda r: -r["cum_s"]
    )[:top]
    fmt = lambda rs: [
        {"where": short(r), "calls": r["calls"], "own_s": round(r["own_s"], 3), "cum_s": round(r["cum_s"], 3)}
        for r in rs
    ]  # noqa: E731
    return {
        "profiled_total_s": round(total, 3),
        "phases": phases,
        "workflow_functions": fmt(ours[:top]),
        "top_own_time": fmt(by_own),
        "top_cumulative": fmt(by_cum),
    }


def run_phases(args: list[str], env: dict) -> tuple[float, dict]:
    boot = f"ARGS = {args!r}\n" + PHASE_BOOT
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", boot], capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    line = next((ln for ln in p.stderr.splitlines() if ln.startswith("COCON_PHASES ")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"timed dry run failed (exit {p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}")
    return dt, json.loads(line.split(" ", 1)[1])


def what_if_copy(tmp: Path) -> Path | None:
    """A copy of the workflow whose shard_videos returns []; None if common.smk has no shard_videos."""
    wf = tmp / "workflow-what-if"
    for name in ("Snakefile", "rules", "envs"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, wf / name)
        elif src.exists():
            wf.mkdir(exist_ok=True)
            shutil.copy2(src, wf / name)
    common = wf / "rules" / "common.smk"
    text = common.read_text()
    if "def shard_videos(" not in text:
        return None
    common.write_text(text + "\n\ndef shard_videos(wildcards):  # bench/dryrun.py --what-if\n    return []\n")
    return wf / "Snakefile"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=240_000, help="clips (default 240000, Kinetics-400 size)")
    ap.add_argument("--labels", type=int, default=400)
    ap.add_argument("--videos-per-shard", type=int, default=256)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="dry runs to time (median reported)")
    ap.add_argument("--plain", action="store_true", help="also time the dry run without --quiet")
    ap.add_argument("--phases", action="store_true", help="also time Snakemake's phases (one more dry run)")
    ap.add_argument("--what-if", action="store_true", help="also time a copy whose frames jobs list no videos")
    ap.add_argument("--profile", action="store_true", help="also profile one dry run with cProfile")
    ap.add_argument("--analyse", action="store_true", help="--plain --phases --what-if --profile")
    ap.add_argument("--top", type=int, default=25, help="rows per table in the profile report")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="parent folder of the temporary folder (default /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is reported)")
    a = ap.parse_args()
    if a.analyse:
        a.plain = a.phases = a.what_if = a.profile = True

    tmp = Path(tempfile.mkdtemp(prefix="cocon-dryrun-", dir=a.tmp or "/tmp"))
    try:
        t0 = time.perf_counter()
        data = make_dataset(tmp, a.videos, a.labels, a.seed)
        setup_s = time.perf_counter() - t0
        cfg_doc = {
            "output_dir": str(tmp / "results"),
            "dataset": {
                "format": "kinetics400",
                "name": "kinetics400",
                "root": data["root"],
                "manifest": data["manifest"],
                "on_missing": "error",
            },
            "shards": {"videos_per_shard": a.videos_per_shard},
        }
        yaml_path = tmp / "config.yaml"
        yaml_path.write_text(json.dumps(cfg_doc, indent=1))  # JSON is YAML

        cfg = load_config(yaml_path)
        t0 = time.perf_counter()
        records, missing = load_dataset(cfg)
        ingest_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        shards = assign_shards(records, a.videos_per_shard)
        shard_s = time.perf_counter() - t0
        cwd = os.getcwd()
        os.chdir(tmp)
        t0 = time.perf_counter()
        for r in records:
            os.path.relpath(r.path)
        relpath_s = time.perf_counter() - t0
        os.chdir(cwd)
        del records

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        args = dry_run_cmd(yaml_path, tmp, a.cores, quiet=True)
        times, text = [], ""
        for _ in range(a.repeats):
            dt, text = run_dry(args, env)
            times.append(dt)
        jobs = parse_job_stats(text)
        dry_s = statistics.median(times)

        import snakemake

        result = {
            "benchmark": "dryrun",
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "snakemake": getattr(snakemake, "__version__", "?"),
            "dataset": {k: data[k] for k in ("videos", "train_rows", "validate_rows", "labels")},
            "videos_per_shard": a.videos_per_shard,
            "shards": len(shards),
            "missing": len(missing),
            "setup_s": round(setup_s, 3),
            "create_files_s": round(data["create_files_s"], 3),
            "ingest_s": round(ingest_s, 3),
            "assign_shards_s": round(shard_s, 3),
            "local_path_s": round(relpath_s, 3),
            "dry_run": {
                "command": "snakemake " + " ".join(dry_run_cmd(Path("<yaml>"), Path("<tmp>"), a.cores, True)),
                "seconds": round(dry_s, 3),
                "all_s": [round(t, 3) for t in times],
                "jobs": jobs,
                "goal_s": GOAL_S,
                "goal_ratio": round(dry_s / GOAL_S, 3),
            },
            "ingest_share_of_dry_run": round(ingest_s / dry_s, 3),
        }
        if not jobs:
            result["dry_run"]["output_tail"] = text[-2000:]
        if a.plain:
            dt, text = run_dry(dry_run_cmd(yaml_path, tmp, a.cores, quiet=False), env)
            result["dry_run_plain"] = {
                "seconds": round(dt, 3),
                "output_lines": text.count("\n"),
                "output_bytes": len(text),
                "goal_ratio": round(dt / GOAL_S, 3),
            }
        if a.phases:
            dt, phases = run_phases(args, env)
            result["phases"] = {"wall_s": round(dt, 3), "seconds": phases}
        if a.what_if:
            snakefile = what_if_copy(tmp)
            if snakefile is None:
                result["what_if_no_video_inputs"] = "skipped: rules/common.smk defines no shard_videos"
            else:
                wargs = dry_run_cmd(yaml_path, tmp, a.cores, quiet=True)
                wargs[wargs.index("-s") + 1] = str(snakefile)
                dt, wtext = run_dry(wargs, env)
                result["what_if_no_video_inputs"] = {
                    "seconds": round(dt, 3),
                    "jobs": parse_job_stats(wtext).get("total"),
                    "saved_s": round(dry_s - dt, 3),
                    "saved_share": round(1 - dt / dry_s, 3),
                }
        if a.profile:
            prof = tmp / "dryrun.prof"
            t0 = time.perf_counter()
            p = subprocess.run(
                [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "snakemake", *args],
                capture_output=True,
                text=True,
                env=env,
            )
            if p.returncode != 0:
                raise SystemExit(f"profiled dry run failed:\n{(p.stdout + p.stderr)[-4000:]}")
            result["profile"] = {"wall_s": round(time.perf_counter() - t0, 3), **profile_summary(prof, a.top)}
            if a.keep:
                result["profile"]["file"] = str(prof)
        if a.keep:
            result["tmp"] = str(tmp)
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
