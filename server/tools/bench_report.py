"""The results of ``switchboard bench``: a JSON-ready summary, a table (rich) and the verdict
(exit status 1 when a delivery was lost or the failures exceed ``--max-errors``; with
``--strict``, also when a test was saturated)."""

from __future__ import annotations

import dataclasses
import sys
from array import array
from typing import Any

import orjson

from .bench_model import Params, Results


def percentiles(values: array[float], points: tuple[float, ...]) -> list[float] | None:
    """Nearest-rank percentiles, None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return [round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 3) for p in points]


def _rate(count: int, start_ns: int, end_ns: int) -> float | None:
    seconds = (end_ns - start_ns) / 1e9
    return round(count / seconds, 1) if count and seconds > 0 else None


def _percent(cpu: float | None, wall: float) -> float | None:
    return round(100 * cpu / wall, 1) if cpu is not None and wall else None


#: a process using this share of a core or more was the bottleneck: the figures are its limit
SATURATED_CPU_PERCENT = 95.0


def saturation(t: dict[str, Any], interval: float) -> list[str]:
    """Why the figures of a test summary ``t`` cannot be trusted as the server's: a process that
    was CPU-bound (the server: its ceiling, with queueing in every latency; the generator: its
    own limit, not the server's), or deliveries that queued (p99 above the message interval)."""
    reasons = []
    for who, key in (("the server", "server_cpu_percent"),
                     ("the load generator", "generator_cpu_percent")):
        percent = t.get(key)
        if percent is not None and percent >= SATURATED_CPU_PERCENT:
            reasons.append(f"{who} was CPU-bound ({percent:.0f}% of a core)")
    p99 = (t.get("latency_ms") or {}).get("p99")
    if interval > 0 and p99 is not None and p99 > interval * 1000:
        reasons.append(f"deliveries queued (latency p99 {p99:,.1f} ms, above the "
                       f"{interval * 1000:g} ms between messages)")
    return reasons


def test_summary(res: Results) -> dict[str, Any]:
    connect = percentiles(res.connect_ms, (50, 99))
    out: dict[str, Any] = {
        "elapsed_s": round(res.elapsed, 3),
        "connections": {
            "attempted": res.attempted, "opened": res.opened,
            "per_second": round(res.opened / res.connect_seconds, 1) if res.connect_seconds else None,
            "latency_ms": dict(zip(("p50", "p99"), connect)) if connect else None,
        },
        "failures": dict(res.failures.most_common()),
        "messages": None, "deliveries": None, "latency_ms": None, "cpu_us_per_delivery": None,
        "server": {"pid": res.server_pid, "rss_mib": res.rss} if res.rss else None,
        "generator_cpu_percent": _percent(res.cpu, res.phase),
        "server_cpu_percent": _percent(res.server_cpu, res.phase),
    }
    if res.name != "storm":
        latency = percentiles(res.latency_ms, (50, 90, 99, 100))
        out["messages"] = {"sent": res.sent, "acked": res.acked,
                           "per_second": _rate(res.sent, res.first_send, res.last_send)}
        out["deliveries"] = {"expected": res.expected, "received": res.delivered,
                             "lost": res.lost, "duplicates": res.duplicates,
                             "per_second": _rate(res.delivered, res.first_send, res.last_delivery)}
        out["latency_ms"] = dict(zip(("p50", "p90", "p99", "max"), latency)) if latency else None
        # CPU per delivery does not depend on what else the machine runs: a generator that
        # spends less than the server per delivery can keep up with it on a core of its own
        out["cpu_us_per_delivery"] = {
            "server": round(res.server_cpu * 1e6 / res.delivered, 2)
            if res.server_cpu is not None and res.delivered else None,
            "generator": round(res.cpu * 1e6 / res.delivered, 2) if res.delivered else None}
    out["saturation"] = saturation(out, res.interval)
    out["saturated"] = bool(out["saturation"])
    return out


def summary(params: Params, results: list[Results], *, target: str,
            strict: bool = False) -> dict[str, Any]:
    """The report; ``strict``: a saturated test is a problem too (exit status 1)."""
    tests = {res.name: test_summary(res) for res in results}
    lost = sum((t["deliveries"] or {}).get("lost", 0) for t in tests.values())
    errors = sum(sum(t["failures"].values()) for t in tests.values())
    problems = []
    if lost:
        problems.append(f"{lost} deliveries lost")
    if errors > params.max_errors:
        problems.append(f"{errors} failures (--max-errors {params.max_errors})")
    warnings = [f"{name}: {reason}" for name, t in tests.items() for reason in t["saturation"]]
    if strict and warnings:
        saturated = ", ".join(name for name, t in tests.items() if t["saturated"])
        problems.append(f"saturated (--strict): {saturated}")
    return {"target": target, "url": params.url, "params": dataclasses.asdict(params),
            "tests": tests, "lost": lost, "errors": errors, "warnings": warnings,
            "problems": problems, "exit_status": 1 if problems else 0}


def _ms(values: dict[str, float] | None, keys: tuple[str, ...]) -> str:
    return "/".join(f"{values[k]:.1f}" for k in keys) if values else "-"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _rows(t: dict[str, Any]) -> list[str]:
    conn, msgs, dels, server = t["connections"], t["messages"], t["deliveries"], t["server"]
    failures = "; ".join(f"{r}: {n}" for r, n in t["failures"].items()) or "none"
    rss = server["rss_mib"] if server else None
    return [
        f"{conn['opened']}/{conn['attempted']}",
        _num(conn["per_second"]),
        _ms(conn["latency_ms"], ("p50", "p99")),
        failures,
        f"{msgs['sent']:,} ({msgs['acked']:,})" if msgs else "-",
        f"{dels['received']:,}/{dels['expected']:,}" if dels else "-",
        _num(dels["per_second"]) if dels else "-",
        _ms(t["latency_ms"], ("p50", "p90", "p99", "max")),
        f"{dels['lost']:,}" if dels else "-",
        f"{rss['start']:.0f}→{rss['peak']:.0f}→{rss['end']:.0f}" if rss else "-",
        _pct(t["server_cpu_percent"]),
        _pct(t["generator_cpu_percent"]),
        "yes" if t["saturated"] else "no",
    ]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


LABELS = ("connections open", "connections/s", "connect ms p50/p99", "failures",
          "messages sent (acked)", "deliveries received/due", "deliveries/s",
          "latency ms p50/p90/p99/max", "messages lost", "server RSS MiB start→peak→end",
          "server CPU", "load generator CPU", "saturated")


def render(report: dict[str, Any], *, json_path: str | None) -> None:
    """The table on stdout (stderr when the JSON goes to stdout), the JSON to ``json_path``."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=json_path == "-", highlight=False)
    if not console.is_terminal:
        console.width = 160
    console.print(f"switchboard bench: {report['target']} at {report['url']}")
    table = Table()
    table.add_column("", no_wrap=True)
    for name in report["tests"]:
        table.add_column(name, justify="right")
    columns = [_rows(t) for t in report["tests"].values()]
    for i, label in enumerate(LABELS):
        table.add_row(label, *(col[i] for col in columns))
    console.print(table)
    reasons = " ".join(r for t in report["tests"].values() for r in t["failures"])
    if "429" in reasons or "RATE_LIMITED" in reasons:
        console.print("hint: the server's limits refused the load; raise security.max_connections_per_ip, "
                      "security.connect_rate_per_ip and rate_limit for a benchmark (docs/benchmarks.md)")
    for warning in report["warnings"]:
        console.print(f"WARNING: saturated: {warning}: the figures of that test are a limit "
                      "reached, not what the server does below it", style="yellow")
    for problem in report["problems"]:
        console.print(f"FAILED: {problem}", style="bold red")
    write_json(report, json_path)


def write_json(report: dict[str, Any], json_path: str | None) -> None:
    """``report`` as indented JSON to ``json_path`` (``-``: standard output; None: nowhere)."""
    if json_path == "-":
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif json_path:
        with open(json_path, "wb") as fh:
            fh.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
