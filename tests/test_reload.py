"""Reloading ``websocket.yaml`` without a restart: ``POST /api/config/reload`` on a server in
this process, and SIGHUP on the real ``switchboard serve``. Rate limits, the filter, IP lists,
origins, connection caps and the log level change for the connections already open, none of
which is dropped; an invalid file changes nothing and is answered with its key-path errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import load_config
from server.reload import RELOADER, changed_paths
from tests.conftest import SECRET, WS, connector, make_token
from tests.proc import ServerProcess, start_server

ADMIN = {"Authorization": f"Bearer {make_token('ops', roles=['admin'])}"}
BASE = f"auth:\n  secret: {SECRET}\n"
ROOT = Path(__file__).resolve().parent.parent

Reload = Callable[[str], Awaitable[tuple[int, Any]]]


@pytest.fixture
async def served(aiohttp_client: Any, tmp_path: Path) -> tuple[TestClient, Reload]:
    """A server started from a file, and a function that rewrites the file (the base config
    plus the text given) and asks the server to reload it."""
    path = tmp_path / "websocket.yaml"
    path.write_text(BASE)
    app = create_app(load_config(path, env={}).config, config_path=str(path))
    app[RELOADER].env = {}  # the file alone, whatever this process's environment holds
    client = await aiohttp_client(app)

    async def reload(extra: str) -> tuple[int, Any]:
        path.write_text(BASE + textwrap.dedent(extra))
        async with client.post("/api/config/reload", headers=ADMIN) as resp:
            return resp.status, await resp.json()

    return client, reload


async def test_filter_and_ip_lists_apply_to_a_live_server(served: tuple[TestClient, Reload]) -> None:
    client, reload = served
    ws = await connector(client)("u", query={"rooms": "lobby"})
    assert (await ws.request("message", room="lobby", data={"content": "darn"}))["type"] == "ack"
    status, body = await reload("""\
        messages:
          filter: {enabled: true, words: [darn]}
        security:
          ip_blacklist_enabled: true
          ip_blacklist: [127.0.0.1]
    """)
    assert status == 200, body
    assert {"messages.filter.enabled", "messages.filter.words", "security.ip_blacklist",
            "security.ip_blacklist_enabled"} <= set(body["applied"])
    assert body["restart_required"] == []
    reply = await ws.request("message", room="lobby", data={"content": "darn"})
    assert reply["data"]["code"] == "MESSAGE_FILTERED"  # the open connection has the new rule
    assert (await ws.request("ping"))["type"] == "pong"  # and is still open
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connector(client)("v")
    assert refused.value.status == 403


async def test_rate_limits_apply_to_open_connections(served: tuple[TestClient, Reload]) -> None:
    client, reload = served
    ws = await connector(client)("u")
    for _ in range(5):
        assert (await ws.request("ping"))["type"] == "pong"
    status, body = await reload("""\
        rate_limit:
          burst: 2
          messages_per_minute: 1
    """)
    assert status == 200
    assert {"rate_limit.burst", "rate_limit.messages_per_minute"} <= set(body["applied"])
    assert [(await ws.request("ping"))["type"] for _ in range(3)] == ["pong", "pong", "error"]


async def test_caps_and_origins_apply_to_new_connections(served: tuple[TestClient, Reload]) -> None:
    client, reload = served
    connect = connector(client)
    first = await connect("u")
    status, _ = await reload("""\
        security:
          max_connections_per_user: 1
          check_origin: true
          allowed_origins: ["https://app.example"]
    """)
    assert status == 200
    token = make_token("v")
    for origin, expected in (("https://evil.example", 403), (None, 403)):
        headers = {"Origin": origin} if origin else {}
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/ws", params={"token": token}, headers=headers)
        assert refused.value.status == expected
    ok = WS(await client.ws_connect("/ws", params={"token": token},
                                    headers={"Origin": "https://app.example"}))
    await ok.recv_type("connected")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws", params={"token": make_token("u")},
                                headers={"Origin": "https://app.example"})
    assert refused.value.status == 429  # u holds its one connection
    assert (await first.request("ping"))["type"] == "pong"


async def test_an_invalid_file_changes_nothing(served: tuple[TestClient, Reload]) -> None:
    client, reload = served
    ws = await connector(client)("u", query={"rooms": "lobby"})
    assert (await reload("messages:\n  filter: {enabled: true, words: [darn]}\n"))[0] == 200
    status, body = await reload("""\
        messages:
          filter: {enabled: false}
        rate_limit:
          burst: -3
        server:
          pong_wait: 1
    """)
    assert status == 400
    error = body["error"]
    assert error["code"] == "INVALID_CONFIG"
    assert "rate_limit.burst: must be a positive integer, got -3" in error["errors"]
    assert any(e.startswith("server.pong_wait: must be greater than") for e in error["errors"])
    reply = await ws.request("message", room="lobby", data={"content": "darn"})
    assert reply["data"]["code"] == "MESSAGE_FILTERED"  # the old config holds
    status, body = await reload("plugins:\n  enabled: [chat, no_such_plugin]\n")
    assert status == 400 and "no_such_plugin" in body["error"]["errors"][0]


async def test_what_needs_a_restart_is_reported_and_not_applied(served: tuple[TestClient, Reload]
                                                               ) -> None:
    client, reload = served
    status, body = await reload("""\
        server:
          ping_period: 5
        presence:
          grace_period: 1
        rooms:
          default_rooms: [welcome]
        logging:
          level: info
    """)
    assert status == 200
    assert body["restart_required"] == ["server.ping_period", "presence.grace_period"]
    assert body["applied"] == ["rooms.default_rooms"]
    ws = await connector(client)("u")
    assert ws.connected is not None
    assert ws.connected["data"]["heartbeat"]["interval"] == 25.0  # not applied
    assert ws.connected["data"]["rooms"] == ["welcome"]  # applied: created and joined
    async with client.get("/api/rooms/welcome", headers=ADMIN) as resp:
        assert resp.status == 200


def test_changed_paths_walks_sections_and_plugin_sections() -> None:
    old = load_config(None, env={}).config
    new = load_config(None, env={}, overrides={"rate_limit": {"burst": 7},
                                               "plugins": {"poll": {"max": 3}}}).config
    assert changed_paths(old, new) == [("rate_limit", "burst"), ("plugins", "poll")]
    assert changed_paths(old, old) == []


# --- SIGHUP on the real server ------------------------------------------------------------------
class _Lines(list[str]):
    """The server's stderr lines, with an event set at each new one."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(lines)
        self.grew = asyncio.Event()

    def append(self, line: str) -> None:
        super().append(line)
        self.grew.set()


async def next_event(server: ServerProcess, name: str, start: int,
                     timeout: float = 10.0) -> tuple[dict[str, Any], int]:
    """The first log event called ``name`` at or after line ``start``, and the line after it."""
    lines = server.lines
    assert isinstance(lines, _Lines)
    async with asyncio.timeout(timeout):
        while True:
            lines.grew.clear()
            for at in range(start, len(lines)):
                if lines[at].startswith("{"):
                    event = json.loads(lines[at])
                    if event.get("event") == name:
                        return event, at + 1
            start = len(lines)
            await lines.grew.wait()


SIGHUP_V1 = "logging:\n  level: info\nrate_limit:\n  burst: 100\n"
SIGHUP_V2 = """\
logging:
  level: warning
rate_limit:
  burst: 2
  messages_per_minute: 1
  max_violations: 1
presence:
  grace_period: 1
"""


async def test_sighup_reloads_the_real_server_without_dropping_a_connection(tmp_path: Path) -> None:
    server = await start_server(tmp_path, SIGHUP_V1)
    server.lines = _Lines(server.lines)
    config = tmp_path / "websocket.yaml"
    try:
        async with aiohttp.ClientSession() as session:
            ws = WS(await session.ws_connect(f"{server.url}/ws", params={"token": make_token("u")}))
            conn_id = (await ws.recv_type("connected"))["data"]["connection_id"]
            await ws.send_raw("not json")
            await ws.recv_type("error")
            rejected, seen = await next_event(server, "frame_rejected", 0)
            assert rejected["conn_id"] == conn_id  # logged at info

            config.write_text("rate_limit:\n  burst: -1\n")
            server.proc.send_signal(signal.SIGHUP)
            failed, seen = await next_event(server, "config_reload_failed", seen)
            assert failed["errors"] == ["rate_limit.burst: must be a positive integer, got -1"]
            assert failed["level"] == "error"
            for _ in range(5):  # the old burst of 100 holds
                assert (await ws.request("ping"))["type"] == "pong"

            config.write_text(SIGHUP_V2)
            server.proc.send_signal(signal.SIGHUP)
            reloaded, seen = await next_event(server, "config_reloaded", seen)
            assert {"logging.level", "rate_limit.burst", "rate_limit.max_violations"} <= \
                set(reloaded["applied"])
            assert reloaded["restart_required"] == ["presence.grace_period"]
            # the open connection: the new burst of 2 ...
            assert [(await ws.request("ping"))["type"] for _ in range(3)] == ["pong", "pong", "error"]
            await ws.send_raw("not json")  # ... and the new level: info events are not written
            await ws.recv_type("error")
            await ws.send("ping")  # the second violation: closed by the new max_violations
            assert await ws.closed() == 4013
            closing, end = await next_event(server, "rate_limit_close", seen)
            assert closing["conn_id"] == conn_id and closing["level"] == "warning"
        assert await server.stop() == 0
    finally:
        await server.kill()
    between = [json.loads(line)["event"] for line in server.lines[seen:end - 1] if line.startswith("{")]
    assert "frame_rejected" not in between and "rate_limited" not in between, between


async def _reload_cli(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """``switchboard reload``, with a config of its own (the key from JWT_SECRET, as the server's)."""
    cli_config = tmp_path / "cli.yaml"
    cli_config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WS_")}
    env.update({"JWT_SECRET": SECRET, "PYTHONPATH": str(ROOT)})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "reload", "-c", str(cli_config), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return await proc.wait(), out.decode(), err.decode()


async def test_the_reload_command_reloads_the_running_server(tmp_path: Path) -> None:
    """``switchboard reload`` (for a server run as a console script, which ``pidof switchboard``
    does not find): applied and restart-required keys, a refused file's key paths and exit 1,
    a wrong API key, no server."""
    server = await start_server(tmp_path, SIGHUP_V1)
    config = tmp_path / "websocket.yaml"
    try:
        config.write_text("rate_limit:\n  burst: -1\n")
        code, out, err = await _reload_cli(tmp_path, "--url", server.url)
        assert code == 1 and out == ""
        assert "refused (400 INVALID_CONFIG)" in err
        assert "rate_limit.burst: must be a positive integer, got -1" in err

        config.write_text(SIGHUP_V2)
        code, out, err = await _reload_cli(tmp_path, "--url", server.url)
        assert code == 0, err
        done = json.loads(out)
        assert {"logging.level", "rate_limit.burst"} <= set(done["applied"])
        assert done["restart_required"] == ["presence.grace_period"]
        assert "presence.grace_period changed: it takes effect at the next start" in err

        code, _, err = await _reload_cli(tmp_path, "--url", server.url, "--api-key", "wrong")
        assert code == 1 and "refused (401 UNAUTHORIZED)" in err
    finally:
        await server.kill()
    code, _, err = await _reload_cli(tmp_path, "--url", server.url)
    assert code == 1 and "no answer from" in err
