"""``switchboard bench``, the real command in a subprocess, with tiny counts: each test type
against a real server, its JSON checked against what the counts make due; refusals counted by
reason against ``--max-errors``; a server that acks but drops deliveries makes it fail;
``--baseline`` starts and stops the raw aiohttp server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from server.protocol import encode, frame
from tests.conftest import SECRET

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0
ROOMS: web.AppKey[dict[str, list[web.WebSocketResponse]]] = web.AppKey("rooms", dict)


def ws_url(client: TestClient | TestServer) -> str:
    return str(client.make_url("/ws")).replace("http://", "ws://", 1)


async def bench(tmp_path: Path, url: str | None, *args: str) -> tuple[int, dict[str, Any] | None, str, str]:
    """Run the command; its exit status, the JSON it wrote, its table and its stderr."""
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(f"auth:\n  secret: {SECRET}\n")
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WS_") and k not in ("JWT_SECRET", "SWITCHBOARD_CONFIG")}
    env["PYTHONPATH"] = str(ROOT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "bench", "-c", str(cfg), "--json", str(out),
        *(("--url", url) if url else ()), *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    code = await proc.wait()  # it has exited: communicate() read to EOF and reaped it
    report = json.loads(out.read_text()) if out.exists() else None
    return code, report, stdout.decode(), stderr.decode()


TINY = ("--connections", "4", "--rooms", "2", "--messages", "3", "--message-interval", "20",
        "--duration", "0.2", "--drain-timeout", "2")


@pytest.mark.parametrize("test_type", ["storm", "throughput", "fanout", "sustained"])
async def test_each_test_type_with_tiny_counts(tmp_path: Path, make_server: Any, test_type: str) -> None:
    server = await make_server()
    code, report, table, err = await bench(tmp_path, ws_url(server), "--test-type", test_type, *TINY)
    assert code == 0, err + table
    assert report is not None and report["exit_status"] == 0 and report["problems"] == []
    assert list(report["tests"]) == [test_type]
    result = report["tests"][test_type]
    conns = result["connections"]
    assert conns["attempted"] == conns["opened"] == 4 and conns["per_second"] > 0
    assert 0 < conns["latency_ms"]["p50"] <= conns["latency_ms"]["p99"]
    assert result["failures"] == {}
    # the server runs in this process, on loopback: its RSS was sampled
    assert result["server"]["pid"] == os.getpid()
    assert 0 < result["server"]["rss_mib"]["start"] <= result["server"]["rss_mib"]["peak"]
    # two rooms of two: each message is due to the one other member of its room
    senders, per_sender = {"storm": (0, 0), "throughput": (4, 3), "fanout": (2, 3),
                           "sustained": (4, 10)}[test_type]
    if test_type == "storm":
        assert result["messages"] is None and result["deliveries"] is None
    else:
        assert result["messages"]["sent"] == result["messages"]["acked"] == senders * per_sender
        deliveries = result["deliveries"]
        assert deliveries["expected"] == deliveries["received"] == senders * per_sender
        assert deliveries["lost"] == deliveries["duplicates"] == 0 and deliveries["per_second"] > 0
        latency = result["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"] < TIMEOUT * 1000
    for label in ("connections/s", "connect ms p50/p99", "deliveries/s", "latency ms p50/p90/p99/max",
                  "messages lost", "server RSS MiB"):
        assert label in table


async def test_a_saturated_run_is_marked_and_strict_fails_it(tmp_path: Path, make_server: Any) -> None:
    """Deliveries that queue (p99 above the time between messages) mark the test saturated: "yes"
    in the table, the reason in the JSON and a warning; the exit status stays 0 unless
    ``--strict``. A run well within its limits is not marked."""
    server = await make_server()
    flood = ("--test-type", "fanout", "--connections", "4", "--rooms", "1", "--messages", "5",
             "--message-interval", "0.001", "--drain-timeout", "2")
    code, report, table, err = await bench(tmp_path, ws_url(server), *flood)
    assert code == 0, err + table
    assert report is not None
    result = report["tests"]["fanout"]
    assert result["saturated"] is True
    assert any(r.startswith("deliveries queued (latency p99") for r in result["saturation"])
    assert report["warnings"] and report["problems"] == []
    assert re.search(r"saturated\s*│\s*yes", table)
    assert "WARNING: saturated: fanout: deliveries queued" in table

    code, report, table, err = await bench(tmp_path, ws_url(server), *flood, "--strict")
    assert code == 1, err + table
    assert report is not None and report["problems"] == ["saturated (--strict): fanout"]

    calm = ("--test-type", "fanout", "--connections", "4", "--rooms", "1", "--messages", "3",
            "--message-interval", "200", "--drain-timeout", "2")
    code, report, table, err = await bench(tmp_path, ws_url(server), *calm, "--strict")
    assert code == 0, err + table
    assert report is not None and report["tests"]["fanout"]["saturated"] is False
    assert re.search(r"saturated\s*│\s*no", table) and "WARNING" not in table


async def test_failures_by_reason_against_max_errors(tmp_path: Path, make_server: Any) -> None:
    server = await make_server({"security": {"max_connections_per_ip": 3},
                                "rate_limit": {"per_type": {"message": {"burst": 2,
                                                                        "messages_per_minute": 60}}}})
    code, report, table, err = await bench(tmp_path, ws_url(server), "--test-type", "throughput",
                                           "--connections", "5", "--messages", "4", "--rooms", "1")
    assert code == 1 and report is not None
    result = report["tests"]["throughput"]
    assert result["connections"]["opened"] == 3
    # each of the 3 sends 4: 2 within the burst, 2 refused; refused messages are not "lost"
    assert result["failures"] == {"429 TOO_MANY_CONNECTIONS": 2, "error RATE_LIMITED": 6}
    assert result["messages"]["acked"] == 6 and result["deliveries"]["expected"] == 6 * 2
    assert result["deliveries"]["lost"] == 0
    assert report["problems"] == ["8 failures (--max-errors 0)"]
    assert "FAILED: 8 failures" in table and "hint: the server's limits refused the load" in table
    code, report, _, err = await bench(tmp_path, ws_url(server), "--test-type", "throughput",
                                       "--connections", "3", "--messages", "4", "--max-errors", "6")
    assert code == 0, err
    assert report is not None and report["errors"] == 6


async def lossy_server() -> TestServer:
    """Acks every room message but delivers only those with an even sequence number."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        room = request.query["rooms"]
        members = request.app[ROOMS].setdefault(room, [])
        members.append(ws)
        await ws.send_frame(encode(frame("connected", {})), WSMsgType.TEXT)
        async for msg in ws:
            obj = json.loads(msg.data)
            if obj["type"] == "message" and obj["data"]["b"][0] % 2 == 0:
                for other in members:
                    if other is not ws:
                        await other.send_frame(encode(frame("message", obj["data"], room=room)),
                                               WSMsgType.TEXT)
            await ws.send_frame(encode(frame("ack" if obj["type"] == "message" else "pong", {},
                                             reply_to=obj.get("id"))), WSMsgType.TEXT)
        return ws

    app = web.Application()
    app[ROOMS] = {}
    app.router.add_get("/ws", handler)
    server = TestServer(app)
    await server.start_server()
    return server


async def test_lost_messages_fail_the_run(tmp_path: Path) -> None:
    server = await lossy_server()
    try:
        code, report, table, _ = await bench(tmp_path, ws_url(server), "--test-type", "fanout",
                                             "--connections", "3", "--messages", "4",
                                             "--message-interval", "5", "--drain-timeout", "0.3")
    finally:
        await server.close()
    assert code == 1 and report is not None
    deliveries = report["tests"]["fanout"]["deliveries"]
    assert deliveries == {**deliveries, "expected": 8, "received": 4, "lost": 4}
    assert report["problems"] == ["4 deliveries lost"] and "FAILED: 4 deliveries lost" in table


async def test_baseline_server_is_started_and_stopped(tmp_path: Path) -> None:
    code, report, _, err = await bench(tmp_path, None, "--baseline", "--test-type", "fanout",
                                       "--connections", "3", "--messages", "3", "--message-interval", "5")
    assert code == 0, err
    assert report is not None and report["target"] == "baseline"
    assert report["url"].startswith("ws://127.0.0.1:")
    result = report["tests"]["fanout"]
    assert result["deliveries"]["received"] == result["deliveries"]["expected"] == 3 * 2
    pid = result["server"]["pid"]
    assert pid != os.getpid() and not Path(f"/proc/{pid}").exists()  # stopped with the bench


@pytest.mark.parametrize(("args", "message"), [
    (("--rooms", "5", "--connections", "2"), "--rooms (5) cannot exceed --connections (2)"),
    (("--connections", "0"), "--connections must be at least 1, got 0"),
    (("--test-type", "sustained", "--message-interval", "0"),
     "--message-interval must be greater than 0 for the sustained test"),
])
async def test_bad_options_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    code, report, _, err = await bench(tmp_path, "ws://127.0.0.1:9/ws", *args)
    assert code == 2 and report is None
    assert f"switchboard bench: {message}" in err and "Traceback" not in err
