"""What the per-message path's shortcuts (docs/benchmarks.md, "Per-message path") must keep:
a client's burst is handled a few frames at a time, in turn with the other connections; the
``ts`` each frame carries is its own millisecond although it is formatted once per millisecond;
the room options worked out once per room follow a config reload."""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import load_config
from server.reload import RELOADER
from tests.conftest import RECV_TIMEOUT, SECRET, Connect, connector, make_token

BURST = 200
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def text_frame(text: str) -> bytes:
    """A client's text frame, masked with the all-zero key (which leaves the payload as is)."""
    payload = text.encode()
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload


async def raw_socket(client: TestClient, sub: str, rooms: str) -> asyncio.StreamWriter:
    """A WebSocket client on a bare TCP socket, to write many frames in one segment (aiohttp's
    client writes each frame on its own, and TCP then delivers the first ten or so alone)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET /ws?token={make_token(sub)}&rooms={rooms} HTTP/1.1\r\nHost: test\r\n"
                 "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECV_TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101"), head
    return writer


async def test_a_burst_from_one_client_does_not_hold_up_another(make_server: Any) -> None:
    client = await make_server({"rate_limit": {"enabled": False}})
    connect = connector(client)
    watcher, other = await connect("watcher", query={"rooms": "r"}), await connect("other")
    await other.request("join", room="r")
    busy = await raw_socket(client, "busy", "r")
    assert (await watcher.recv_type("user_joined"))["data"]["user"]["id"] == "other"
    assert (await watcher.recv_type("user_joined"))["data"]["user"]["id"] == "busy"
    # the whole burst reaches the server in one piece, just before the other client's frame
    busy.write(b"".join(text_frame(json.dumps({"type": "message", "room": "r",
                                                "data": {"content": f"b{i}"}}))
                        for i in range(BURST)))
    await other.send("message", room="r", data={"content": "my turn"})
    seen = [(await watcher.recv_type("message"))["data"]["content"] for _ in range(BURST + 1)]
    busy.close()
    mine = seen.index("my turn")
    # handled in turn with the burst's frames, not after all of them
    assert mine < BURST // 2, f"the other client's message came after {mine} of {BURST}"
    assert [c for c in seen if c != "my turn"] == [f"b{i}" for i in range(BURST)]  # in order


async def test_frames_carry_the_millisecond_they_were_made(connect: Connect) -> None:
    ws = await connect()
    stamps = []
    for _ in range(30):
        now = datetime.now(UTC)
        before = now.replace(microsecond=now.microsecond // 1000 * 1000)
        ts = (await ws.request("ping"))["ts"]
        after = datetime.now(UTC)
        assert TS.fullmatch(ts), ts
        assert before <= datetime.fromisoformat(ts) <= after, (ts, before)
        stamps.append(ts)
    assert stamps == sorted(stamps)


async def test_room_options_follow_a_reload(aiohttp_client: Any, tmp_path: Path) -> None:
    path = tmp_path / "websocket.yaml"
    base = f"auth:\n  secret: {SECRET}\n"
    path.write_text(base)
    app = create_app(load_config(path, env={}).config, config_path=str(path))
    app[RELOADER].env = {}
    client = await aiohttp_client(app)
    ws = await connector(client)("u", query={"rooms": "lobby,ns:1"})
    for room in ("lobby", "ns:1"):
        assert (await ws.request("message", room=room, data={"content": "hi"}))["type"] == "ack"
    path.write_text(base + textwrap.dedent("""\
        rooms:
          namespaces:
            ns: {client_publish: false}
    """))
    admin = {"Authorization": f"Bearer {make_token('ops', roles=['admin'])}"}
    async with client.post("/api/config/reload", headers=admin) as resp:
        assert resp.status == 200, await resp.text()
    assert (await ws.request("message", room="lobby", data={"content": "hi"}))["type"] == "ack"
    refused = await ws.request("message", room="ns:1", data={"content": "hi"})
    assert refused["type"] == "error" and refused["data"]["code"] == "FORBIDDEN", refused
