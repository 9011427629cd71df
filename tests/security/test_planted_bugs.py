"""Tests that bite (docs/security.md): each one was written against a deliberate bug that the
rest of the suite let through, and was seen to FAIL with that bug planted in the core and to
pass on the real code. Each docstring names the planted change, so it can be planted again.

Real servers over real sockets; every wait is bounded. Bug (e), ``refresh`` accepting a revoked
token, is covered by ``tests/security/test_tokens.py``.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import load_config
from server.reload import RELOADER
from tests.conftest import SECRET, WS, make_token

MakeServer = Callable[..., Awaitable[TestClient]]
TIMEOUT = 5.0


async def upgrade(client: TestClient, sub: str, *, forwarded_for: str | None = None) -> WS | int:
    """A WebSocket once its ``connected`` frame came, or the status the upgrade was refused with."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    try:
        raw = await client.ws_connect("/ws", params={"token": make_token(sub)}, headers=headers,
                                      timeout=aiohttp.ClientWSTimeout(ws_close=TIMEOUT))
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    ws = WS(raw)
    ws.connected = await ws.recv_type("connected")
    return ws


async def refusal(client: TestClient, sub: str, *, forwarded_for: str | None = None) -> int | str:
    """The status an upgrade is refused with, or ``"admitted"``."""
    result = await upgrade(client, sub, forwarded_for=forwarded_for)
    if isinstance(result, WS):
        await result.close()
        return "admitted"
    return result


def opened(result: WS | int, what: str) -> WS:
    assert isinstance(result, WS), f"{what}: the upgrade was refused with {result}"
    return result


# --- (a) a peer that only answers pings is alive ----------------------------------------------
async def test_a_peer_answering_pings_without_text_is_not_closed_4010(
        make_server: MakeServer) -> None:
    """Planted: in server/ws.py ``_read_loop``, ``conn.last_activity = time.monotonic()`` moved
    from after ``ws.receive()`` into the ``WSMsgType.TEXT`` branch (only text frames count as
    activity). Then this peer is closed 4010 after ``pong_wait``; the suite's own heartbeat
    test sends text pings, which hid the bug."""
    ping_period, pong_wait = 0.1, 0.3
    client = await make_server({"server": {"ping_period": ping_period, "pong_wait": pong_wait}})
    # autoping off only so that the test sees each ping: it answers every one, as autoping does
    raw = await client.ws_connect("/ws", params={"token": make_token("quiet")}, autoping=False)
    await WS(raw).recv_type("connected")
    loop = asyncio.get_running_loop()
    started = loop.time()
    answered = 0
    # outlive pong_wait three times over, counted in the server's own pings
    while loop.time() - started < 3 * pong_wait or answered < 6:
        msg = await raw.receive(timeout=TIMEOUT)
        assert msg.type is not WSMsgType.CLOSE, \
            f"closed {msg.data} ({msg.extra}) after {answered} pings answered"
        assert msg.type is WSMsgType.PING, f"unexpected {msg.type}: {msg.data!r}"
        await raw.pong(msg.data)
        answered += 1
    ws = WS(raw)
    assert (await ws.request("ping"))["type"] == "pong"  # still open, and served
    await ws.close()


# --- (b) per-IP limits key on the forwarded client ----------------------------------------------
async def test_per_ip_cap_and_connect_rate_key_on_the_forwarded_client(
        make_server: MakeServer) -> None:
    """Planted (once each): in server/http/guards.py ``_admit``, the per-IP cap keyed on the
    peer (``self.slots.by_ip.get(request.remote, 0)`` and ``Lease(self.slots, request.remote,
    ...)``), which refuses client B below; and the connect rate keyed on the peer
    (``self.connect_rate.take(request.remote, ...)``), which refuses client C below. Every
    client behind one proxy would then share one cap and one bucket."""
    client = await make_server({
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "security": {"max_connections_per_ip": 1, "connect_rate_per_ip": 2},
    })
    a = opened(await upgrade(client, "a1", forwarded_for="203.0.113.1"), "client A")
    b = opened(await upgrade(client, "b1", forwarded_for="203.0.113.2"), "client B")
    # A is at its own cap: refused, and that attempt spends A's second connect token
    assert await refusal(client, "a2", forwarded_for="203.0.113.1") == 429
    # three attempts came through the proxy so far; C has a bucket of its own
    c = opened(await upgrade(client, "c1", forwarded_for="203.0.113.3"), "client C")
    assert await refusal(client, "a3", forwarded_for="203.0.113.1") == 429
    for ws in (a, b, c):
        assert (await ws.request("ping"))["type"] == "pong"


# --- (c) binary frames count towards 4501 -------------------------------------------------------
async def test_binary_frames_count_towards_the_4501_close(make_server: MakeServer) -> None:
    """Planted: ``ErrorCode.UNSUPPORTED_FRAME`` removed from ``COUNTED_AS_INVALID`` in
    server/frames.py. Each binary frame is still answered UNSUPPORTED_FRAME (all the suite
    checked), but a client could send them forever without being closed."""
    limit = 3
    client = await make_server({"messages": {"max_invalid_frames": limit}})
    ws = opened(await upgrade(client, "bin"), "binary sender")
    for _ in range(limit + 1):
        await ws.ws.send_bytes(b'{"type": "ping"}')
    assert await ws.closed(timeout=2.0) == 4501


# --- (d) a reload applies trusted_proxies and max_connections -----------------------------------
BASE = f"""\
auth:
  secret: {SECRET}
security:
  ip_blacklist_enabled: true
  ip_blacklist: [203.0.113.9]
"""
ADMIN = {"Authorization": f"Bearer {make_token('ops', roles=['admin'])}"}


async def test_reload_applies_trusted_proxies_and_max_connections_live(
        aiohttp_client: Any, tmp_path: Path) -> None:
    """Planted (once each): ``("server", "trusted_proxies")`` removed from ``LIVE`` in
    server/reload.py (the blacklisted forwarded client below is still admitted), and
    ``("server", "max_connections")`` removed (the third connection is still admitted). The
    suite reloaded the per-user cap and origins only."""
    path = tmp_path / "websocket.yaml"
    path.write_text(BASE)
    app = create_app(load_config(path, env={}).config, config_path=str(path))
    app[RELOADER].env = {}
    client = await aiohttp_client(app)
    # no trusted proxy yet: X-Forwarded-For is ignored, the peer 127.0.0.1 is not blacklisted
    first = opened(await upgrade(client, "u1", forwarded_for="203.0.113.9"), "before reload")
    path.write_text(BASE + textwrap.dedent("""\
        server:
          trusted_proxies: [127.0.0.1/32]
          max_connections: 2
    """))
    async with client.post("/api/config/reload", headers=ADMIN) as resp:
        assert resp.status == 200, await resp.text()
    assert await refusal(client, "u2", forwarded_for="203.0.113.9") == 403  # now believed
    second = opened(await upgrade(client, "u3", forwarded_for="203.0.113.10"), "second")
    assert await refusal(client, "u4", forwarded_for="203.0.113.11") == 503  # at the new cap
    for ws in (first, second):  # nobody already open was dropped
        assert (await ws.request("ping"))["type"] == "pong"


# --- (f) 1001 for a connection admitted as draining began ---------------------------------------
async def test_connection_admitted_as_draining_began_is_closed_1001(
        make_server: MakeServer) -> None:
    """Planted: the ``if node.hub.draining:`` close (1001) after ``node.attach(conn)`` removed
    from ``connected`` in server/lifecycle.py. The socket is upgraded (admitted) before the
    drain, but joins the hub only after it, when its ``auth`` frame is verified: the drain's
    ``close_all`` cannot see it, and without that check it stays open through the drain."""
    client = await make_server()
    pending = WS(await client.ws_connect("/ws"))  # admitted; waiting for its auth frame
    await client.app.shutdown()  # the shutdown signal the runner sends: the drain begins
    await pending.send("auth", data={"token": make_token("late")})
    assert await pending.closed(timeout=2.0) == 1001
