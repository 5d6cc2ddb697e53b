"""The GPU check's reports: gpu_check.json and gpu_check.md (the same as markdown tables)."""

from __future__ import annotations

from pathlib import Path


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
