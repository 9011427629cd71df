"""Connections: the connected frame, ping, heartbeats, slow consumers, fan-out, compression."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import WSMsgType

import server.backends.memory_streams
from server.keys import NODE
from tests.conftest import WS, connector, make_token


async def test_connected_frame_describes_the_session(make_server: Any) -> None:
    client = await make_server({"rooms": {"default_rooms": ["lobby"]},
                                "server": {"ping_period": 7, "pong_wait": 21}})
    connect = connector(client)
    ws = await connect("u1", username="alice", query={"rooms": "a,b"})
    data = ws.connected["data"]  # type: ignore[index]
    assert data["user"] == {"id": "u1", "username": "alice"}
    assert data["rooms"] == ["a", "b", "lobby"]
    assert data["heartbeat"] == {"interval": 7, "timeout": 21}
    assert data["online_count"] == 1 and data["connection_id"] and data["node"]
    assert isinstance(data["expires_at"], int)
    assert ws.connected["ts"].endswith("Z")  # type: ignore[index]
    second = await connect("u2")
    assert second.connected["data"]["online_count"] == 2  # type: ignore[index]


async def test_ping_message_type_gets_pong(connect: Any) -> None:
    ws = await connect()
    await ws.send("ping", id="p1")
    pong = await ws.recv()
    assert pong["type"] == "pong" and pong["reply_to"] == "p1"


async def test_silent_peer_is_closed_with_4010(make_server: Any) -> None:
    client = await make_server({"server": {"ping_period": 0.1, "pong_wait": 0.4}})
    raw = await client.ws_connect("/ws", params={"token": make_token("u1")}, autoping=False)
    ws = WS(raw)
    await ws.recv_type("connected")
    seen_ping = False
    while True:  # never answer the server's pings
        msg = await raw.receive(timeout=5)
        if msg.type is WSMsgType.PING:
            seen_ping = True
            continue
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED):
            break
    assert seen_ping
    assert raw.close_code == 4010


async def test_answering_peer_outlives_pong_wait(make_server: Any) -> None:
    client = await make_server({"server": {"ping_period": 0.1, "pong_wait": 0.4}})
    ws = await connector(client)()  # aiohttp answers pings itself (autoping)
    pings_outlived = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.2  # three times pong_wait
    while loop.time() < deadline:
        assert (await ws.request("ping"))["type"] == "pong"
        pings_outlived += 1
        await asyncio.sleep(0.1)
    assert not ws.ws.closed and pings_outlived >= 5


async def test_slow_consumer_is_closed_with_4008_and_nobody_waits(make_server: Any) -> None:
    client = await make_server({
        "rate_limit": {"enabled": False},
        "server": {"write_buffer_size": 256 * 1024, "max_queued_messages": 200,
                   "max_message_size": 1 << 20},
    })
    connect = connector(client)
    sender, reader, slow = await connect("s"), await connect("r"), await connect("slow")
    for ws in (sender, reader, slow):
        await ws.request("join", room="room")
    content = "x" * 4000
    total = 3000  # ~12 MB: far beyond loopback socket buffers plus the 256 KiB queue cap

    async def read_all(ws: WS) -> int:
        got = 0
        while got < total:
            frame = await ws.recv(timeout=10)
            if frame["type"] == "message":
                got += 1
        return got

    reading = asyncio.create_task(read_all(reader))
    # the slow client never reads; the sender gets every ack without waiting for it
    for i in range(total):
        await sender.send("message", id=f"m{i}", room="room", data={"content": content})
    acks = 0
    while acks < total:
        frame = await sender.recv(timeout=10)
        if frame["type"] == "ack":
            acks += 1
        elif frame["type"] == "user_left":  # the slow one, closed while the acks come
            assert frame["data"]["user"]["id"] == "slow", frame
        else:
            assert frame["type"] == "user_joined", frame
    assert await asyncio.wait_for(reading, 20) == total

    received = 0
    while True:
        msg = await slow.ws.receive(timeout=10)
        if msg.type is WSMsgType.TEXT:
            received += json.loads(msg.data)["type"] == "message"
            continue
        break
    assert slow.ws.close_code == 4008
    assert received < total


async def test_fan_out_encodes_once_for_all_recipients(connect: Any, monkeypatch: Any) -> None:
    members = [await connect(f"u{i}") for i in range(5)]
    for ws in members:
        await ws.request("join", room="r")
    calls: list[Any] = []
    real = server.backends.memory_streams.encode  # a room message is encoded where it is kept

    def counting(obj: Any) -> bytes:
        calls.append(obj.get("type"))
        return real(obj)

    monkeypatch.setattr(server.backends.memory_streams, "encode", counting)
    await members[0].request("message", room="r", data={"content": "once"})
    frames = [await ws.recv_type("message") for ws in members[1:]]
    assert len({json.dumps(f, sort_keys=True) for f in frames}) == 1  # the very same bytes
    assert calls.count("message") == 1


async def test_compression_is_off_by_default_and_can_be_enabled(make_server: Any) -> None:
    for enabled in (False, True):
        client = await make_server({"server": {"compression": enabled}})
        raw = await client.ws_connect("/ws", params={"token": make_token()}, compress=15)
        assert bool(raw.compress) is enabled
        await WS(raw).recv_type("connected")
        await raw.close()


async def test_write_stalled_past_write_timeout_closes_with_4008(make_server: Any) -> None:
    # queue caps far above what is sent: only the stalled write can close it
    client = await make_server({
        "rate_limit": {"enabled": False},
        "server": {"write_buffer_size": 1 << 30, "max_queued_messages": 1 << 20,
                   "write_timeout": 0.3, "max_message_size": 1 << 20},
        "messages": {"max_message_length": 20000},
    })
    connect = connector(client)
    sender, slow = await connect("s"), await connect("slow")
    for ws in (sender, slow):
        await ws.request("join", room="room")
    content = "y" * 16000
    for i in range(1000):  # 16 MB, more than the loopback socket buffers hold
        await sender.send("message", room="room", data={"content": content})
    # the behaviour under test: this client does not read until the server has given up on its
    # stalled write (write_timeout, on the server's own clock): poll for that, bounded
    (conn,) = client.server.app[NODE].hub.user_connections("slow")
    async with asyncio.timeout(10):
        while conn.close_code is None:
            await asyncio.sleep(0.05)
    while True:
        msg = await slow.ws.receive(timeout=10)
        if msg.type is not WSMsgType.TEXT:
            break
    assert slow.ws.close_code == 4008
