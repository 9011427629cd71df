"""The results of ``switchboard bench --suite``: a table of every scenario (the medians of each
side, the ratio and the target), the JSON of every run, and the exit status: 0 when every
target holds, 1 when one falls short or a scenario could not be measured (lost deliveries,
failed connections, a server that did not start)."""

from __future__ import annotations

import platform
from typing import Any

from .bench_report import write_json
from .bench_suite import Outcome, median, verdicts


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("aiohttp", "orjson", "pydantic", "uvloop", "switchboard"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def machine() -> dict[str, Any]:
    import os

    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def report(outcomes: list[Outcome], *, rounds: int, quick: bool, pinned: bool,
           event_loop: str | None) -> dict[str, Any]:
    scenarios = []
    failed = []
    for o in outcomes:
        s = o.scenario
        checks = []
        for check, value, holds in verdicts(o):
            checks.append({"check": check.describe(), "metric": check.metric, "kind": check.kind,
                           "op": check.op, "limit": check.limit,
                           "value": None if value is None else round(value, 3),
                           "holds": holds})
            if not holds and not (o.error or "").startswith("not run"):
                failed.append(f"{s.name}: {check.describe()}"
                              + (f" ({value:.3g})" if value is not None else f" ({o.error})"))
        scenarios.append({
            "name": s.name, "what": s.what, "subject": s.subject.label,
            "reference": s.reference.label if s.reference else None, "error": o.error,
            "runs": {"subject": o.subject, "reference": o.reference}, "checks": checks})
    return {"suite": {"rounds": rounds, "quick": quick, "pinned": pinned,
                      "event_loop": event_loop or "server default"},
            "machine": machine(), "versions": _versions(), "scenarios": scenarios,
            "short": failed, "exit_status": 1 if failed else 0}


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def _spread(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    mid = median(known)  # type: ignore[arg-type]
    if mid is None:
        return "-"
    if len(known) < 2:
        return _fmt(mid)
    return f"{_fmt(mid)} ({_fmt(min(known))}-{_fmt(max(known))})"


def render(rep: dict[str, Any], *, json_path: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=json_path == "-", highlight=False)
    if not console.is_terminal:
        console.width = 170
    suite, m = rep["suite"], rep["machine"]
    console.print(f"switchboard bench --suite: {suite['rounds']} round(s)"
                  f"{', quick sizes' if suite['quick'] else ''}, "
                  f"{'server and generator pinned to separate cores' if suite['pinned'] else 'not pinned'}, "
                  f"event loop: {suite['event_loop']}; {m['cpus']} CPUs {m['cpu']}, "
                  f"load average {m['load_average']}")
    table = Table()
    for col in ("scenario", "metric", "subject (median, range)", "reference", "ratio", "target", ""):
        table.add_column(col, justify="left" if col in ("scenario", "metric", "target") else "right")
    for s in rep["scenarios"]:
        first = True
        for c in s["checks"]:
            subject = [r.get(c["metric"]) for r in s["runs"]["subject"]]
            reference = [r.get(c["metric"]) for r in s["runs"]["reference"]]
            verdict = ("not run" if (s["error"] or "").startswith("not run")
                       else "ok" if c["holds"] else "SHORT")
            table.add_row(s["name"] if first else "", c["metric"], _spread(subject),
                          _spread(reference) if reference else "-",
                          _fmt(c["value"]) if c["kind"] == "ratio" else "",
                          f"{c['op']} {c['limit']:g}" + (" (ratio)" if c["kind"] == "ratio" else ""),
                          verdict, style=None if c["holds"] else "red")
            first = False
    console.print(table)
    for s in rep["scenarios"]:
        console.print(f"  {s['name']}: {s['what']}"
                      + (f" [{s['subject']} vs {s['reference']}]" if s["reference"] else ""))
        if s["error"]:
            console.print(f"    {s['error']}", style="yellow" if s["error"].startswith("not run") else "red")
    for short in rep["short"]:
        console.print(f"SHORT: {short}", style="bold red")
    write_json(rep, json_path)
