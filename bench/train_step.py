"""Training-step benchmark: clips/s and peak memory of one CoCon training step (forward of both
views' DPC networks, L_cocon, backward, Adam step) for the fp32 eager baseline and the fast-path
options of cocon.train.engine (bf16 autocast, channels_last, torch.compile, fused Adam, cudnn.benchmark),
alone and combined, with the losses of the first steps to show that every variant trains the same function.

    python bench/train_step.py [--device auto|cpu|cuda] [--size PX] [--batch B] [--steps S]
                               [--warmup W] [--check-steps C] [--repeats R] [--compile-cap SECONDS]
                               [--variants ...] [--no-baseline] [--json PATH]

GPU run (the issue's goal: fast path >= 2x the fp32 eager baseline in clips/s):

    python bench/train_step.py --device cuda --repeats 2    # 128 px, batch 16, 3 warm-up + 20 timed steps

A variant is fp32_eager (the baseline) or settings joined by '+', any of: bf16 (autocast), channels_last,
compile, fused_adam (torch.optim.Adam(fused=True): one kernel for all parameters; the config's
runtime.fused_adam), cudnn_benchmark (torch.backends.cudnn.benchmark = True: cuDNN times its convolution
algorithms on the first steps and keeps the fastest; runtime.cudnn_benchmark), e.g.
bf16+channels_last+cudnn_benchmark+fused_adam. The last two only mean something on CUDA.

Model: cocon.models.build.PerViewNetworks with two views, rgb (3 channels) and flow_tvl1 (2), each a DPC with
the training defaults (ResNet2d3d-18, width 64, N = 8 blocks of K = 5 frames, P = 3 predicted),
L_cocon with lam 10, alpha 1, tau 0.005, Adam lr 1e-3 / weight decay 1e-5. GRU dropout is 0 here
(--dropout): inductor draws its own random numbers, so with dropout the compiled variants would not see
the same function; the dropout costs well under 1 % of a step. Input: one fixed batch of standard
normal clips (seed 0), (B, 8, C, 5, size, size) per view, already on the device (the loader is not
timed). Every variant starts from the same initial weights (seed 0) in a fresh process.

A step is what cocon.train.engine.Engine._step does with the same options: the inputs converted with
cocon.train.engine.channels_last_3d when channels_last, the networks under autocast(bf16) when bf16, their
outputs cast to float32, cocon_loss, zero_grad, backward, Adam step; channels_last also puts the
encoders' Conv3d weights in channels_last_3d; compile calls nn.Module.compile() (inductor) on each
view's network, as the engine does; fused_adam and cudnn_benchmark set what the engine sets for
runtime.fused_adam and runtime.cudnn_benchmark.

Per variant, one subprocess per run (so memory and compilation do not leak between variants), the
variants run round robin --repeats times:
  * check steps (--check-steps, 2): the losses before the first and the second update are compared
    with the baseline's: loss_max_rel_diff = max_i |loss_i - base_i| / |base_i|, tolerance TOL_FP32 for
    fp32 variants (rounding only) and TOL_BF16 for bf16 ones (features rounded to 8 mantissa bits
    before the logits / 0.005) -> loss_equal. Do not ask for many more: this loss is chaotic on one
    repeated batch at lr 1e-3, so even fp32 reorderings drift apart (~5 % after 6 steps on CPU).
  * warm-up steps (--warmup: 3 on CUDA, 0 on CPU), untimed. first_step_s is the first step's time
    per repeat; for compiled variants compile_s = first_step_s - step_s (tracing, code generation and
    C++/Triton builds; the kernels are cached on disk, under /tmp/torchinductor_<user> by default, so
    later runs compile much faster: compile_cache_existed says whether that folder was there).
  * timed steps (--steps: 20 on CUDA, 2 on CPU): median seconds per step over all repeats ->
    steps_per_s, clips_per_s = batch / step_s, ratio_vs_baseline = clips_per_s / baseline's. On CPU
    also the median process CPU time per step (all threads) and ratio_vs_baseline_cpu_time, meant to
    be less sensitive to other processes than wall time (not a shield: on the 2-vCPU reference VM the
    CPU time per step grew as much as the wall time while other jobs ran).
  * peak memory. CUDA: torch.cuda.max_memory_allocated() over all steps (absolute: weights, Adam state,
    inputs and activations). CPU: the growth of the process's resident-set high-water mark
    (resource.getrusage ru_maxrss) from the end of the setup (model, optimiser, inputs) to the end of
    the steps (activations, gradients, Adam state, allocator caches; for compiled variants also the
    compiler's own memory). The largest over repeats.
  * a compiled variant whose first step has not finished --compile-cap seconds (600 on CUDA, 30 on
    CPU) after its setup is stopped and reported as capped, without timings.

On CPU the default variants leave out 'compile' alone: inductor's first (cold-cache) compilation of
this model takes about 1.5 minutes on 2 cores, beyond the 30 s cap, and the capped combination says
as much. Time a compilation on its own with `--variants compile --no-baseline --compile-cap 600`;
afterwards the cache is warm and the default run times the compiled variants too.

Prints one JSON object (progress on stderr); --json PATH also writes it there, rewritten after every
variant, so a run stopped from outside (SIGTERM: the running worker is stopped too) leaves the variants it
finished. With the defaults it takes about 1 minute on 2 idle cores (plus up to 30 s when the compile cache
is cold).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import platform
import queue
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cocon.files import write_json  # noqa: E402
from cocon.models.build import PerViewNetworks  # noqa: E402
from cocon.models.losses import cocon_loss  # noqa: E402
from cocon.models.networks import DPC  # noqa: E402
from cocon.train.engine import channels_last_3d  # noqa: E402

from _machine import cpu_model  # noqa: E402

GOAL_RATIO_GPU = 2.0
TOL_FP32 = 1e-3  # relative loss difference allowed for fp32 variants (float rounding only)
TOL_BF16 = 5e-2  # bf16 autocast: features rounded to 8 mantissa bits before logits / tau (tau = 0.005)
SETTINGS = ("bf16", "channels_last", "compile", "fused_adam", "cudnn_benchmark")
BASELINE = "fp32_eager"
VARIANTS = [BASELINE, "bf16", "channels_last", "compile", "bf16+channels_last", "bf16+channels_last+compile"]
CUDA_VARIANTS = [
    *VARIANTS,
    "bf16+channels_last+cudnn_benchmark",
    "bf16+channels_last+cudnn_benchmark+fused_adam",
    "bf16+channels_last+compile+cudnn_benchmark+fused_adam",
]


def settings(name: str) -> dict[str, bool]:
    """{setting: on} of a variant name (fp32_eager, or settings joined by '+')."""
    parts = [] if name == BASELINE else name.split("+")
    unknown = [p for p in parts if p not in SETTINGS]
    if unknown or not name or len(set(parts)) != len(parts):
        raise argparse.ArgumentTypeError(f"variant {name!r}: {BASELINE!r} or settings joined by '+' from {SETTINGS}")
    return {k: k in parts for k in SETTINGS}


def variant(name: str) -> str:
    settings(name)
    return name


VIEWS = {"rgb": 3, "flow_tvl1": 2}


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------------------------------ worker


def emit(**event) -> None:
    print(json.dumps(event), flush=True)


def worker(a) -> None:
    """One variant in this process; progress and results as JSON lines on stdout."""
    on = settings(a.worker)
    bf16, channels_last, compiled = on["bf16"], on["channels_last"], on["compile"]
    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = on["cudnn_benchmark"]
    torch.manual_seed(0)
    models = PerViewNetworks(
        {v: DPC(c, depth=18, num_blocks=a.blocks, pred_steps=a.pred_steps, dropout=a.dropout) for v, c in VIEWS.items()}
    ).to(device)
    if channels_last:
        for m in models.values():
            m.encoder.to(memory_format=torch.channels_last_3d)
    if compiled:
        for m in models.values():
            m.compile()
    opt = torch.optim.Adam(
        models.parameters(), lr=1e-3, weight_decay=1e-5, **({"fused": True} if on["fused_adam"] else {})
    )
    g = torch.Generator().manual_seed(0)
    x = {
        v: torch.randn(a.batch, a.blocks, c, a.block_len, a.size, a.size, generator=g).to(device)
        for v, c in VIEWS.items()
    }
    if channels_last:
        x = {v: channels_last_3d(t) for v, t in x.items()}
    models.train()

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = models(x)
        outputs = {v: type(o)(*(t.float() for t in o)) for v, o in outputs.items()}
        terms = cocon_loss(outputs, lam=10.0, alpha=1.0, variant="code", temperature=0.005)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        return terms["total"].detach()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = maxrss_mib()
    emit(event="setup", rss_mib=rss0)
    losses, times, cpu_times = [], [], []
    for i in range(a.check_steps + a.warmup + a.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        if i < a.check_steps:
            losses.append(float(loss))
        emit(event="step", i=i, seconds=times[-1])
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = maxrss_mib() - rss0
    t = a.check_steps + a.warmup
    emit(
        event="done",
        losses=losses,
        first_step_s=times[0],
        timed_s=times[t:],
        timed_cpu_s=cpu_times[t:],
        peak_mib=peak,
        rss_end_mib=maxrss_mib(),
    )


# ------------------------------------------------------------------------------------------ parent


def run_variant(name: str, a, cap: float | None) -> dict:
    """Run one variant in a subprocess; returns its final event, or what is known when it was capped."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--device",
        a.device,
        "--size",
        str(a.size),
        "--batch",
        str(a.batch),
        "--steps",
        str(a.steps),
        "--check-steps",
        str(a.check_steps),
        "--warmup",
        str(a.warmup),
        "--blocks",
        str(a.blocks),
        "--block-len",
        str(a.block_len),
        "--pred-steps",
        str(a.pred_steps),
        "--dropout",
        str(a.dropout),
        "--threads",
        str(a.threads or 0),
    ]
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: compiler warnings never block the worker
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        try:
            r = _follow(p, cap)
        finally:  # also when this process is interrupted or terminated: never leave a worker behind
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if "error" in r and not r.get("capped"):
            err.seek(0)
            r["error"] += ": " + (err.read().strip()[-2000:] or "(no stderr)")
        return r


def _follow(p: subprocess.Popen, cap: float | None) -> dict:
    """Read the worker's JSON lines; stop waiting when the first step outlasts the cap."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in p.stdout] + [lines.put(None)], daemon=True).start()
    deadline = None  # for the first step (compilation) only
    events: list[dict] = []
    t_start = time.perf_counter()
    setup_s = None
    while True:
        try:
            line = lines.get(timeout=None if deadline is None else max(0.0, deadline - time.perf_counter()))
        except queue.Empty:  # the cap ran out during the first step (the caller stops the worker)
            return {
                "capped": True,
                "error": f"first step (compilation) not finished within the cap of {cap:.0f} s; stopped",
                "setup_s": round(setup_s, 1),
            }
        if line is None:
            break
        ev = json.loads(line)
        events.append(ev)
        if ev["event"] == "setup":
            setup_s = time.perf_counter() - t_start
            if cap is not None:
                deadline = time.perf_counter() + cap
        elif ev["event"] == "step":
            deadline = None
    p.wait()
    if p.returncode or not events or events[-1]["event"] != "done":
        return {"error": f"worker exited with {p.returncode}"}
    done = events[-1]
    done["setup_s"] = round(setup_s, 1)
    return done


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--size", type=int, default=None, help="frame side in px (default 128 on CUDA, 64 on CPU)")
    ap.add_argument("--batch", type=int, default=None, help="clips per step (default 16 on CUDA, 2 on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on CUDA, 2 on CPU)")
    ap.add_argument(
        "--check-steps",
        type=int,
        default=2,
        help="first steps whose losses are compared (default 2: before and after the first update)",
    )
    ap.add_argument(
        "--warmup", type=int, default=None, help="untimed steps after the check steps (default 3 on CUDA, 0 on CPU)"
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every variant this many times, round robin (timings pooled; on a shared machine)",
    )
    ap.add_argument(
        "--compile-cap",
        type=float,
        default=None,
        help="seconds allowed for a compiled variant's first step (default 600 on CUDA, 30 on CPU)",
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        default=None,
        type=variant,
        help=f"in this order; default on CUDA: {', '.join(CUDA_VARIANTS)}; on CPU: {', '.join(VARIANTS)} but "
        f"'compile' (see the docstring); {BASELINE} runs first unless --no-baseline",
    )
    ap.add_argument(
        "--no-baseline",
        action="store_true",
        help="leave out the baseline (no ratios or loss checks), e.g. to time a compilation alone",
    )
    ap.add_argument("--blocks", type=int, default=8, help="N blocks per clip")
    ap.add_argument("--block-len", type=int, default=5, help="K frames per block")
    ap.add_argument("--pred-steps", type=int, default=3)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--json", default=None, help="also write the result here (rewritten after every variant)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in run_variant
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is visible")
    gpu = a.device == "cuda"
    a.size = a.size or (128 if gpu else 64)
    a.batch = a.batch or (16 if gpu else 2)
    a.steps = a.steps or (20 if gpu else 2)
    a.warmup = (3 if gpu else 0) if a.warmup is None else a.warmup
    cap = a.compile_cap or (600.0 if gpu else 30.0)
    default = CUDA_VARIANTS if gpu else [n for n in VARIANTS if n != "compile"]
    names = ([] if a.no_baseline else [BASELINE]) + [n for n in dict.fromkeys(a.variants or default) if n != BASELINE]
    cache = Path(
        os.environ.get("TORCHINDUCTOR_CACHE_DIR") or Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"
    )

    result = {
        "benchmark": "train_step",
        "device": a.device,
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": a.threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        **(
            {
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
                "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
            }
            if gpu
            else {}
        ),
        "model": {
            "views": VIEWS,
            "depth": 18,
            "width": 64,
            "N": a.blocks,
            "K": a.block_len,
            "P": a.pred_steps,
            "size": a.size,
            "dropout": a.dropout,
        },
        "batch": a.batch,
        "check_steps": a.check_steps,
        "warmup_steps": a.warmup,
        "timed_steps": a.steps,
        "repeats": a.repeats,
        "compile_cap_s": cap,
        "compile_cache_existed": cache.is_dir(),
        "memory": (
            "torch.cuda.max_memory_allocated over all steps, absolute"
            if gpu
            else "growth of ru_maxrss (resident-set high-water mark) from the end of setup to the end of the steps"
        ),
        "loss_tolerance": {
            "fp32": TOL_FP32,
            "bf16": TOL_BF16,
            "measure": "max over the check steps of |loss - baseline loss| / |baseline loss|",
        },
        "goal": {"ratio_vs_baseline": GOAL_RATIO_GPU, "on": "cuda"},
        "variants": {},
    }
    t_all = time.perf_counter()
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(a.repeats):
        for name in names:
            r = run_variant(name, a, cap if settings(name)["compile"] else None)
            runs[name].append(r)
            print(f"{name} (repeat {rep + 1}/{a.repeats}): {json.dumps(r)}", file=sys.stderr, flush=True)
            summarise(result, runs, a, gpu)
            result["total_s"] = round(time.perf_counter() - t_all, 1)
            if a.json:
                write_json(a.json, result)
    print(json.dumps(result, indent=1))


def summarise(result: dict, runs: dict[str, list[dict]], a, gpu: bool) -> None:
    """result["variants"] and result["best"] from the runs so far (variants without a run left out)."""
    base = None
    result["variants"] = {}
    for name, rs in runs.items():
        if not rs:
            continue
        on = settings(name)
        out = dict(on)
        bad = [r for r in rs if "error" in r]
        if bad:
            out.update(bad[0])
            result["variants"][name] = out
            continue
        timed = [t for r in rs for t in r["timed_s"]]
        step_s = statistics.median(timed)
        out.update(
            {
                "step_s": round(step_s, 4),
                "steps_per_s": round(1 / step_s, 4),
                "clips_per_s": round(a.batch / step_s, 3),
                "step_s_all": [round(t, 4) for t in timed],
                "step_s_min": round(min(timed), 4),
                **(
                    {"step_cpu_s": round(statistics.median([t for r in rs for t in r["timed_cpu_s"]]), 4)}
                    if not gpu
                    else {}
                ),
                "first_step_s": [round(r["first_step_s"], 3) for r in rs],
                **({"compile_s": [round(r["first_step_s"] - step_s, 2) for r in rs]} if on["compile"] else {}),
                "peak_mem_mib": round(max(r["peak_mib"] for r in rs), 1),
                "losses": rs[0]["losses"],
                "losses_same_in_every_repeat": all(r["losses"] == rs[0]["losses"] for r in rs),
                "setup_s": [r["setup_s"] for r in rs],
            }
        )
        if name == BASELINE:
            base = out
        elif base is not None:
            out["ratio_vs_baseline"] = round(out["clips_per_s"] / base["clips_per_s"], 3)
            if not gpu:
                out["ratio_vs_baseline_cpu_time"] = round(base["step_cpu_s"] / out["step_cpu_s"], 3)
            out["mem_vs_baseline"] = (
                round(out["peak_mem_mib"] / base["peak_mem_mib"], 3) if base["peak_mem_mib"] > 0 else None
            )
            n = min(len(out["losses"]), len(base["losses"]))
            if n:
                diff = max(abs(out["losses"][i] - base["losses"][i]) / abs(base["losses"][i]) for i in range(n))
                tol = TOL_BF16 if on["bf16"] else TOL_FP32
                out.update(
                    {"loss_max_rel_diff": float(f"{diff:.3g}"), "loss_tolerance": tol, "loss_equal": diff <= tol}
                )
        result["variants"][name] = out
    ok = {n: v for n, v in result["variants"].items() if "ratio_vs_baseline" in v}
    if ok:
        best = max(ok, key=lambda n: ok[n]["ratio_vs_baseline"])
        result["best"] = {
            "variant": best,
            "ratio_vs_baseline": ok[best]["ratio_vs_baseline"],
            "goal_met": ok[best]["ratio_vs_baseline"] >= GOAL_RATIO_GPU if gpu else None,
        }


if __name__ == "__main__":
    main()
