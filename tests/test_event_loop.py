"""``server.event_loop``: the real ``switchboard serve`` on uvloop (the ``speed`` extra, in the
test extra too) and on asyncio's own loop. On each: the loop in use is reported (the
``server_listening`` line, ``GET /api/stats``, the ``switchboard_info`` metric); two WebSocket
clients chat; a half-sent request line is cut after ``server.handshake_timeout`` (the
``HeaderDeadline`` protocol in front of aiohttp's); an unmasked frame is refused with 1002
(``MaskGuard``, behind the listener's ``HeaderDeadline``); SIGHUP reloads (a changed loop
waits for a restart); SIGTERM closes the clients with 1001. ``auto`` is uvloop when installed;
with uvloop not importable, ``auto`` is asyncio and ``uvloop`` is a config error naming
``server.event_loop``. ``--workers`` processes run on the configured loop too.

uvloop's transports are not subclasses of asyncio's (a check of the class refused every
connection): what the server does with a transport and its socket is checked here on both."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server import event_loop
from server.connection import KERNEL_UNSENT, _limit_kernel_unsent
from tests.conftest import WS, make_token
from tests.proc import ServerProcess, start_server
from tests.resilience.test_limits import Raw, assert_no_crash
from tests.test_workers import start_workers

pytest_plugins = ["tests.services"]

UVLOOP = importlib.util.find_spec("uvloop") is not None
needs_uvloop = pytest.mark.skipif(not UVLOOP, reason="uvloop is not installed: pip install "
                                                     "-e '.[test]' (or '.[speed]')")
LOOPS = [pytest.param("uvloop", marks=needs_uvloop), "asyncio"]
HANDSHAKE_TIMEOUT = 1.0
WAIT = 10.0
CONFIG = (f"server:\n  event_loop: {{loop}}\n  handshake_timeout: {HANDSHAKE_TIMEOUT}\n"
          "  shutdown_timeout: 3\n")


def listening_loop(srv: ServerProcess) -> str:
    line = next(e for e in srv.events() if e["event"] == "server_listening")
    loop: str = line["event_loop"]
    return loop


async def next_event(srv: ServerProcess, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = [e for e in srv.events() if e["event"] == name]
        if found:
            return found[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {name!r} in the log:\n" + "\n".join(srv.lines[-20:]))


async def reported(http: aiohttp.ClientSession, srv: ServerProcess) -> tuple[str, str]:
    """The loop as ``GET /api/stats`` and the ``switchboard_info`` metric say."""
    admin = {"Authorization": f"Bearer {make_token('ops', roles=['admin'])}"}
    async with http.get(f"{srv.url}/api/stats", headers=admin) as resp:
        assert resp.status == 200, await resp.text()
        stats = await resp.json()
    async with http.get(f"{srv.url}/metrics", headers=admin) as resp:
        assert resp.status == 200
        info = next(line for line in (await resp.text()).splitlines()
                    if line.startswith("switchboard_info{"))
    metric = info.split('event_loop="', 1)[1].split('"', 1)[0]
    return stats["event_loop"], metric


async def cut_after(port: int, head: bytes) -> float:
    """Seconds from sending ``head`` (an incomplete request) until the server closes the socket
    without an answer."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
    try:
        writer.write(head)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        return time.monotonic() - started
    finally:
        writer.close()


@pytest.mark.parametrize("loop", LOOPS)
async def test_serve_runs_and_serves_on_the_configured_loop(tmp_path: Path, loop: str) -> None:
    srv = await start_server(tmp_path, CONFIG.format(loop=loop))
    try:
        assert listening_loop(srv) == loop
        async with aiohttp.ClientSession() as http:
            assert await reported(http, srv) == (loop, loop)

            a, b = [WS(await http.ws_connect(f"{srv.url}/ws", params={"token": make_token(u)}))
                    for u in ("ann", "bob")]
            for ws in (a, b):
                await ws.recv_type("connected")
                assert (await ws.request("join", room="lobby"))["type"] == "joined"
            assert (await a.request("message", room="lobby", data={"content": "hi"}))["type"] \
                == "ack"
            got = await b.recv_type("message")
            assert (got["room"], got["data"], got["from"]["id"]) == ("lobby", {"content": "hi"},
                                                                    "ann")

            # the header deadline: half a request line is cut after handshake_timeout
            took = await cut_after(srv.port, b"GET /ws HT")
            assert HANDSHAKE_TIMEOUT - 0.2 < took < HANDSHAKE_TIMEOUT + 2.0, took
            assert (await next_event(srv, "handshake_timeout"))["remote"] == "127.0.0.1"

            # an unmasked client frame never reaches aiohttp: close 1002
            raw = await Raw.connect(srv, "mallory")
            await raw.send(bytes((0x81, 0x02)) + b"hi")
            assert await raw.close_code() == 1002
            raw.abort()

            # SIGHUP reloads; another loop waits for a restart
            other = "asyncio" if loop == "uvloop" else "auto"
            (tmp_path / "websocket.yaml").write_text(CONFIG.format(loop=other))
            srv.proc.send_signal(signal.SIGHUP)
            reloaded = await next_event(srv, "config_reloaded")
            assert reloaded["restart_required"] == ["server.event_loop"]
            assert (await a.request("ping"))["type"] == "pong"
            assert (await reported(http, srv))[0] == loop

            # SIGTERM: the open connections are closed with 1001, the process exits 0
            srv.proc.send_signal(signal.SIGTERM)
            assert [await ws.closed(timeout=5) for ws in (a, b)] == [1001, 1001]
        assert await srv.wait(timeout=10) == 0
    finally:
        await srv.kill()
    assert_no_crash(srv)


@needs_uvloop
async def test_auto_is_uvloop_when_installed(tmp_path: Path) -> None:
    srv = await start_server(tmp_path, "server:\n  event_loop: auto\n")
    try:
        assert listening_loop(srv) == "uvloop"
        async with aiohttp.ClientSession() as http:
            assert await reported(http, srv) == ("uvloop", "uvloop")
        assert await srv.stop() == 0
    finally:
        await srv.kill()


def without_uvloop(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import uvloop`` fails (a module of that name that raises
    ImportError, first on the path), as where it is not installed."""
    blocked = tmp_path / "no-uvloop"
    blocked.mkdir()
    (blocked / "uvloop.py").write_text("raise ImportError('uvloop is blocked by this test')\n")
    return {"PYTHONPATH": str(blocked)}


async def test_without_uvloop_auto_is_asyncio(tmp_path: Path) -> None:
    srv = await start_server(tmp_path, "server:\n  event_loop: auto\n",
                             env=without_uvloop(tmp_path))
    try:
        assert listening_loop(srv) == "asyncio"
        assert await srv.stop() == 0
    finally:
        await srv.kill()


async def test_without_uvloop_uvloop_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "websocket.yaml"
    cfg.write_text("server:\n  event_loop: uvloop\n")
    env = {**without_uvloop(tmp_path), "JWT_SECRET": "s" * 48}
    expected = "server.event_loop: uvloop is not installed: install it (pip install "
    for args, code in ((("serve", "-c", str(cfg), "--port", "0"), 2),
                       (("check-config", str(cfg)), 1)):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            cwd=str(tmp_path))
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        text = (out + err).decode()
        assert proc.returncode == code, text
        assert expected in text, text
        assert "server_listening" not in text


@needs_uvloop
async def test_workers_run_on_the_configured_loop(tmp_path: Path, redis_url: str) -> None:
    server = await start_workers(tmp_path, redis_url, "  event_loop: uvloop\n")
    try:
        listening = server.found("server_listening")
        assert sorted(e["worker"] for e in listening) == [1, 2]
        assert {e["event_loop"] for e in listening} == {"uvloop"}
    finally:
        await server.close()


@needs_uvloop
def test_uvloop_transports_take_the_server_socket_options() -> None:
    """On uvloop, ``get_extra_info("socket")`` is a stand-in for the socket: TCP_NOTSENT_LOWAT
    (connection.py, which bounds what a slow reader's kernel holds) is set through it."""
    if not hasattr(socket, "TCP_NOTSENT_LOWAT"):
        pytest.skip("no TCP_NOTSENT_LOWAT on this platform")

    async def main() -> tuple[str, int, int]:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[asyncio.BaseTransport] = loop.create_future()

        class Accept(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted.set_result(transport)

        server = await loop.create_server(Accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        transport = await asyncio.wait_for(accepted, WAIT)
        sock = transport.get_extra_info("socket")
        _limit_kernel_unsent(transport)
        lowat = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
        limits = transport.get_write_buffer_limits()  # type: ignore[attr-defined]
        transport.close()
        writer.close()
        server.close()
        await server.wait_closed()
        return event_loop.name(loop), lowat, limits[1]

    with event_loop.runner("uvloop") as runner:
        name, lowat, high_water = runner.run(main())
    assert (name, lowat) == ("uvloop", KERNEL_UNSENT)
    assert high_water > 0


@pytest.mark.parametrize("loop", LOOPS)
def test_the_listener_limits_what_every_accepted_socket_leaves_unsent(loop: str) -> None:
    """``http.handshake.listen`` sets TCP_NOTSENT_LOWAT once, on the listening socket before it
    listens; Linux copies it to every socket it accepts, so a connection need not set it again
    (its protocol says so: on uvloop each setsockopt through the transport builds a socket)."""
    if not hasattr(socket, "TCP_NOTSENT_LOWAT") or not sys.platform.startswith("linux"):
        pytest.skip("the listener passes TCP_NOTSENT_LOWAT on only on Linux")
    from aiohttp import web

    from server.http import handshake
    from server.http.wire import MaskGuard

    async def main() -> list[tuple[int, bool]]:
        seen: list[tuple[int, bool]] = []

        async def hello(request: web.Request) -> web.Response:
            transport = request.transport
            assert transport is not None
            sock = transport.get_extra_info("socket")
            seen.append((sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT),
                         transport.get_protocol().kernel_unsent_limited))  # type: ignore[attr-defined]
            return web.Response(text="hi")

        async def upgraded(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            MaskGuard.install(request)  # as server/ws.py does: the guard answers for the socket
            await hello(request)
            await ws.close()
            return ws

        app = web.Application(middlewares=[handshake.headers_read])
        app.router.add_get("/", hello)
        app.router.add_get("/ws", upgraded)
        runner = web.AppRunner(app)
        await runner.setup()
        listener = await handshake.listen(runner, "127.0.0.1", 0, timeout=WAIT)
        port = listener.sockets[0].getsockname()[1]
        try:
            for _ in range(2):  # a fresh connection each time
                async with aiohttp.ClientSession() as session, \
                        session.get(f"http://127.0.0.1:{port}/") as resp:
                    assert await resp.text() == "hi"
            async with aiohttp.ClientSession() as session, \
                    session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                await ws.receive()
        finally:
            listener.close()
            await runner.cleanup()
        return seen

    with event_loop.runner(loop) as runner:
        seen = runner.run(main())
    assert seen == [(KERNEL_UNSENT, True)] * 3


def test_the_settings_choose_the_loop() -> None:
    assert event_loop.factory("asyncio") is None
    assert (event_loop.factory("auto") is not None) == UVLOOP
    for setting, expected in (("asyncio", "asyncio"), ("auto", "uvloop" if UVLOOP else "asyncio")):
        with event_loop.runner(setting) as runner:  # type: ignore[arg-type]
            assert event_loop.name(runner.get_loop()) == expected
    assert event_loop.running() is None  # outside a loop


async def test_the_default_is_uvloop_when_installed(tmp_path: Path) -> None:
    """server.event_loop: auto, its default, runs on uvloop when it is installed (the test
    extra installs it, as the speed extra does)."""
    assert event_loop.uvloop_available()
    srv = await start_server(tmp_path, "")
    try:
        assert listening_loop(srv) == "uvloop"
        assert await srv.stop() == 0
    finally:
        await srv.kill()
