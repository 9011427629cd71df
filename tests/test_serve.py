"""The real ``switchboard serve`` process: health, signals, graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import WS, make_token
from tests.proc import start_server


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_closes_connections_with_1001_and_exits(tmp_path: Path, sig: int) -> None:
    server = await start_server(tmp_path, "server:\n  shutdown_timeout: 3\n")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "ok"
            clients = []
            for user in ("a", "b"):
                raw = await session.ws_connect(f"{server.url}/ws", params={"token": make_token(user)})
                ws = WS(raw)
                await ws.recv_type("connected")
                clients.append(ws)
            started = time.monotonic()
            server.proc.send_signal(sig)
            codes = [await ws.closed(timeout=5) for ws in clients]
            assert codes == [1001, 1001]
            assert await server.wait(timeout=5) == 0
            assert time.monotonic() - started < 3 + 1
    finally:
        await server.kill()
    names = [e["event"] for e in server.events()]
    assert "server_draining" in names and names[-1] == "server_stopped"


async def test_bad_config_refuses_to_start_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("rate_limit:\n  burst: -3\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "serve", "-c", str(cfg), "--port", "0",
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert "rate_limit.burst: must be a positive integer, got -3" in err.decode()


def test_python_dash_m_server_is_the_switchboard_command() -> None:
    out = subprocess.run([sys.executable, "-m", "server", "--help"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0
    for command in ("serve", "check-config", "token"):
        assert command in out.stdout


@pytest.mark.parametrize("backlog", [None, 300])
async def test_the_listen_backlog_is_the_configured_one(tmp_path: Path, backlog: int | None) -> None:
    """A connect storm must queue in the kernel rather than have SYNs dropped: the listening
    socket's backlog (``ss``'s Send-Q) is server.backlog, 2048 unless set (capped by
    net.core.somaxconn)."""
    server = await start_server(tmp_path, f"server:\n  backlog: {backlog}\n" if backlog else "")
    try:
        out = subprocess.run(["ss", "-Hltn", f"sport = :{server.port}"], capture_output=True,
                             text=True, check=True).stdout.split()
        cap = int(Path("/proc/sys/net/core/somaxconn").read_text())
        assert int(out[2]) == min(backlog or 2048, cap), out
    finally:
        await server.stop()


@pytest.mark.parametrize("config, threshold, frozen", [
    ("", 10_000, True),  # the defaults: server/collector.py
    ("server:\n  gc_threshold: 0\n  gc_freeze: false\n", 700, False),  # CPython's own
    ("server:\n  gc_threshold: 2500\n", 2500, True),
])
async def test_the_garbage_collector_runs_as_configured(
        tmp_path: Path, config: str, threshold: int, frozen: bool) -> None:
    """``server.gc_threshold`` and ``server.gc_freeze``, as the process applies them and
    ``GET /api/stats`` reports them."""
    server = await start_server(tmp_path, config)
    try:
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {make_token('ops', roles=['admin'])}"}
            async with session.get(f"{server.url}/api/stats", headers=headers) as resp:
                assert resp.status == 200
                gc_state = (await resp.json())["gc"]
    finally:
        await server.kill()
    assert gc_state["threshold"][0] == threshold
    # start-up alone makes tens of thousands of objects (modules, schemas, plugins)
    assert (gc_state["frozen"] > 10_000) if frozen else gc_state["frozen"] == 0
