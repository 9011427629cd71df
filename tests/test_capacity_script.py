"""benchmarks/capacity.py, the N-nodes-on-one-Redis simulation behind docs/deploy.md ("Capacity to
1M connections"), runs
to the end with tiny numbers against a redis-server it starts itself, prints its table and
writes its JSON with every figure, and loses no delivery. No timing is asserted: the figures
are the script's business, this only keeps it working as the backend changes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import REDIS_SERVER_BIN

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "capacity.py"

pytestmark = pytest.mark.skipif(shutil.which(REDIS_SERVER_BIN) is None,
                                reason="redis-server is not installed (tests/run.sh installs it)")


def test_the_capacity_script_runs_small_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "capacity.json"
    nodes, rooms, messages, spread, connections = 3, 12, 120, 2, 30
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--nodes", str(nodes), "--rooms", str(rooms),
         "--messages", str(messages), "--spread", str(spread), "--connections", str(connections),
         "--concurrency", "4", "--probes", "2", "--latency-probes", "2",
         "--latency-interval", "1", "--wait", "10", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=45, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| kept |" in done.stdout and "| plain |" in done.stdout, done.stdout

    result = json.loads(out.read_text())
    assert result["config"] == result["config"] | {
        "nodes": nodes, "rooms": rooms, "messages": messages, "spread": spread,
        "cluster": False, "masters": 1}
    assert {"redis", "cpus", "python"} <= result["machine"].keys()

    kept, plain = result["phases"]
    assert (kept["phase"], plain["phase"]) == ("kept", "plain")
    for phase in (kept, plain):
        due = messages * spread  # each message reaches every node subscribed to its room
        assert phase["publishes"] == messages
        assert phase["deliveries_due"] == due
        assert phase["deliveries"] == due, phase
        assert phase["redis_deliveries"] == due, phase
        assert phase["lost"] == 0 and phase["complete"] is True
        for field in ("publishes_per_s", "deliveries_per_s", "redis_cpu_s",
                      "redis_cpu_us_per_publish", "redis_cpu_us_per_delivery", "redis_busy",
                      "redis_sys_share", "client_cpu_us_per_publish",
                      "seconds_to_last_delivery"):
            assert isinstance(phase[field], (int, float)), field
        assert len(phase["redis_cpu_s_by_master"]) == 1

    memory = result["memory"]
    assert memory["entries_kept"] == messages  # 10 a room, under history_size: all kept
    for field in ("bytes_per_entry", "bytes_per_room_history", "bytes_per_entry_overall",
                  "used_memory_before", "used_memory_after"):
        assert isinstance(memory[field], (int, float)), field

    churn = result["churn"]
    assert churn["connections"] == connections
    for step in ("open", "close"):
        assert {"per_s", "redis_cpu_us_each", "bytes_each"} <= churn[step].keys()
    assert result["subscribe"]["probes"] == 2
    assert result["latency"]["probes"] == 2 and result["latency"]["lost"] == 0
