"""The figures of the GPU check, read from each benchmark's JSON result, each beside its goal (met or
not): bench/tvl1.py, bench/train_step.py, bench/pose_seg.py, bench/loader.py with --device cuda."""

from __future__ import annotations

import json
from pathlib import Path


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
