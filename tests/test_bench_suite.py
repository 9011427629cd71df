"""``switchboard bench --suite`` (docs/benchmarks.md): the real command at its quick sizes,
which starts Switchboard and the raw aiohttp reference itself, measures both sides and prints
the ratios; and its verdict, which must exit 1 when a target falls short."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from server.tools.bench_suite import Check, Outcome, Scenario, Side, scenarios
from server.tools.bench_suite_names import SCENARIOS
from server.tools.bench_suite_report import report

ROOT = Path(__file__).resolve().parent.parent


async def suite(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[int, dict[str, Any] | None, str]:
    out = tmp_path / "suite.json"
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "SWITCHBOARD_CONFIG")}
    env["PYTHONPATH"] = str(ROOT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "bench", "--suite", "--json", str(out), *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env, cwd=tmp_path)
    stdout, _ = await asyncio.wait_for(proc.communicate(), timeout)
    code = await proc.wait()
    return code, json.loads(out.read_text()) if out.exists() else None, stdout.decode()


async def test_the_quick_suite_measures_both_sides_and_gives_each_ratio(tmp_path: Path) -> None:
    code, rep, output = await suite(tmp_path, "--quick", "--rounds", "1",
                                    "--only", "pipeline,storm", "--only", "room-storm")
    # at these sizes the figures mean nothing, so the verdict may go either way; what must
    # hold is that every scenario ran on both sides and gave its ratios
    assert code in (0, 1), output
    assert rep is not None and rep["exit_status"] == code
    assert [s["name"] for s in rep["scenarios"]] == ["pipeline", "storm", "room-storm"]
    for s in rep["scenarios"]:
        assert s["error"] is None, output
        assert len(s["runs"]["subject"]) == len(s["runs"]["reference"]) == 1
        for c in s["checks"]:
            assert c["value"] is not None and c["value"] > 0, (s["name"], c, output)
    storm = rep["scenarios"][1]["runs"]
    assert storm["subject"][0]["connections_per_s"] > 0 < storm["reference"][0]["connections_per_s"]
    assert "storm" in output and "connections_per_s" in output and "ratio" in output
    assert rep["suite"]["pinned"] == (len(os.sched_getaffinity(0)) >= 2)


async def test_unknown_scenarios_are_refused(tmp_path: Path) -> None:
    code, rep, output = await suite(tmp_path, "--only", "fanout,warp-speed")
    assert code == 2 and rep is None
    assert "unknown scenario warp-speed" in output and "fanout" in output


def test_the_option_names_every_scenario() -> None:
    assert tuple(s.name for s in scenarios(False)) == SCENARIOS


def _outcome(subject: list[float], reference: list[float], check: Check, error: str | None = None) -> Outcome:
    side = Side("a", "switchboard")
    scenario = Scenario("x", "x", side, side, None, (check,))  # type: ignore[arg-type]
    return Outcome(scenario, [{"m": v} for v in subject], [{"m": v} for v in reference], error)


@pytest.mark.parametrize(("subject", "reference", "check", "status", "value"), [
    ([2.0, 3.0, 1.0], [1.0, 1.0, 1.0], Check("m", ">=", 1.25), 0, 2.0),   # median of ratios
    ([1.0, 1.1, 1.2], [1.0, 1.0, 1.0], Check("m", ">=", 1.25), 1, 1.1),
    ([30.0, 60.0, 10.0], [20.0, 20.0, 20.0], Check("m", "<=", 1.5), 0, 1.5),
    ([31.0, 60.0, 10.0], [20.0, 20.0, 20.0], Check("m", "<=", 1.5), 1, 1.55),
    ([29.0, 35.0, 20.0], [], Check("m", "<", 30, kind="absolute"), 0, 29.0),
    ([31.0, 35.0, 20.0], [], Check("m", "<", 30, kind="absolute"), 1, 31.0),
])
def test_the_verdict_is_the_median_of_each_rounds_ratio(subject: list[float], reference: list[float],
                                                         check: Check, status: int, value: float) -> None:
    rep = report([_outcome(subject, reference, check)], rounds=3, quick=False, pinned=True, event_loop=None)
    assert rep["exit_status"] == status
    assert rep["scenarios"][0]["checks"][0]["value"] == pytest.approx(value, abs=1e-3)


def test_a_scenario_that_failed_is_short_and_one_not_run_is_not() -> None:
    failed = _outcome([], [], Check("m", ">=", 1), error="RuntimeError: fanout: 3 deliveries lost")
    assert report([failed], rounds=1, quick=False, pinned=True, event_loop=None)["exit_status"] == 1
    missing = _outcome([], [], Check("m", ">=", 1), error="not run: redis-server is not installed")
    assert report([missing], rounds=1, quick=False, pinned=True, event_loop=None)["exit_status"] == 0
