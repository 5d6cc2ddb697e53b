"""The GPU tier's per-test results: a pytest plugin (`-p gpu_check_events`, bench/ on PYTHONPATH) that
appends one JSON line per test phase to $COCON_GPU_CHECK_EVENTS as it ends, and the readers of those lines
and of the tier's JUnit XML."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

EVENTS_ENV = "COCON_GPU_CHECK_EVENTS"

# the plugin: one JSON line per test phase, appended as it ends


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


# the readers


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
