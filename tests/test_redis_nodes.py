"""Two Switchboard nodes on one Redis act as one server: a room message from A reaches members
on B exactly once with the offset of its ack, a private message finds a user connected only to
B, online counts agree, a client catches up on the other node, and deleting a room,
disconnecting a user and revoking a token act on both nodes. Run on one Redis and on a Redis
Cluster (tests/services.py starts both)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
import yaml
from aiohttp import WSServerHandshakeError
from aiohttp.test_utils import TestClient

from server.keys import NODE
from tests.conftest import WS, connector, make_token
from tests.proc import start_server

pytest_plugins = ["tests.services"]

MakeServer = Callable[..., Awaitable[TestClient]]
ADMIN = {"X-API-Key": "k" * 32}


@pytest.fixture(params=["redis", "redis-cluster"])
async def nodes(request: pytest.FixtureRequest, make_server: MakeServer) -> tuple[TestClient, TestClient]:
    cluster = request.param == "redis-cluster"
    url = request.getfixturevalue("cluster_url" if cluster else "redis_url")

    async def node(name: str) -> TestClient:
        return await make_server({
            "server": {"node_id": name},
            "backend": {"type": "redis", "redis": {"url": url, "cluster": cluster}},
            "plugins": {"enabled": ["chat", "presence"]},
            "presence": {"grace_period": 0},
            "api": {"keys": ["k" * 32]},
        })

    return await node("node-a"), await node("node-b")


async def _joined(ws: WS, room: str) -> dict[str, Any]:
    joined = await ws.request("join", room=room)
    assert joined["type"] == "joined", joined
    return joined


async def test_a_room_message_reaches_the_other_node_once_with_its_offset(
        nodes: tuple[TestClient, TestClient]) -> None:
    a, b = nodes
    alice = await connector(a)("alice")
    bob, bob2 = await connector(b)("bob"), await connector(b)("bob")
    assert (alice.connected["data"]["node"], bob.connected["data"]["node"]) == ("node-a", "node-b")
    for ws in (alice, bob, bob2):
        await _joined(ws, "lobby")
    ack = await alice.request("message", room="lobby", data={"content": "hello from a"})
    assert ack["type"] == "ack"
    for ws in (bob, bob2):
        got = await ws.recv_type("message")
        assert got["data"]["content"] == "hello from a" and got["offset"] == ack["data"]["offset"]
        assert got["id"] == ack["data"]["id"] and got["from"]["id"] == "alice"
    reply = await bob.request("message", room="lobby", data={"content": "and back"})
    got = await alice.recv_type("message")
    assert got["data"]["content"] == "and back" and got["offset"] == reply["data"]["offset"]
    assert await bob.until_pong() == [] and await alice.until_pong() == []  # each exactly once


async def test_a_private_message_finds_its_user_on_the_other_node(
        nodes: tuple[TestClient, TestClient]) -> None:
    a, b = nodes
    alice, bob = await connector(a)("alice"), await connector(b)("bob")
    ack = await alice.request("message", to="bob", data={"content": "psst"})
    assert ack["type"] == "ack" and ack["data"]["offset"]  # kept in the conversation
    got = await bob.recv_type("message")
    assert got["data"]["content"] == "psst" and got["to"] == "bob"
    assert got["offset"] == ack["data"]["offset"]
    await bob.close()
    await alice.request("message", to="bob", data={"content": "while you were away"})
    back = await connector(b)("bob")  # the inbox, kept in Redis, arrives on reconnect
    waiting = await back.recv_type("message")
    assert waiting["data"]["content"] == "while you were away" and waiting["inbox"] is True
    page = (await back.request("history", to="alice"))["data"]  # the conversation, from node b
    assert [m["data"]["content"] for m in page["messages"]] == ["psst", "while you were away"]
    assert page["messages"][0]["offset"] == ack["data"]["offset"]


async def test_online_counts_and_presence_agree(nodes: tuple[TestClient, TestClient]) -> None:
    a, b = nodes
    await connector(a)("alice")
    bob = await connector(b)("bob")
    assert bob.connected["data"]["online_count"] == 2
    for node in nodes:
        body = await (await node.get("/api/online/count", headers=ADMIN)).json()
        assert body["online_count"] == 2, body


async def test_catching_up_on_the_other_node(nodes: tuple[TestClient, TestClient]) -> None:
    a, b = nodes
    alice, carol = await connector(a)("alice"), await connector(a)("carol")
    await _joined(alice, "r")
    joined = await _joined(carol, "r")
    seen = joined["data"]["offset"]
    await carol.close()
    sent = [await alice.request("message", room="r", data={"content": str(i)}) for i in range(3)]
    again = await connector(b)("carol")
    rejoined = await _joined_since(again, "r", seen)
    assert rejoined["data"]["recovered"] is True
    assert [m["data"]["content"] for m in rejoined["data"]["missed"]] == ["0", "1", "2"]
    assert rejoined["data"]["offset"] == sent[-1]["data"]["offset"]


async def _joined_since(ws: WS, room: str, since: str) -> dict[str, Any]:
    joined = await ws.request("join", room=room, data={"since": since})
    assert joined["type"] == "joined", joined
    return joined


async def test_delete_disconnect_and_revoke_act_on_both_nodes(
        nodes: tuple[TestClient, TestClient]) -> None:
    a, b = nodes
    alice, bob = await connector(a)("alice"), await connector(b)("bob")
    resp = await a.post("/api/rooms", json={"id": "ops"}, headers=ADMIN)
    assert resp.status == 201
    for ws in (alice, bob):
        await _joined(ws, "ops")
    assert (await a.delete("/api/rooms/ops", headers=ADMIN)).status in (200, 204)
    for ws in (alice, bob):
        left = await ws.recv_type("left")
        assert left["data"] == {"room": "ops", "members_count": 0, "reason": "deleted"}

    resp = await a.post("/api/disconnect", json={"user_id": "bob"}, headers=ADMIN)
    assert resp.status == 200
    assert await bob.closed() == 4503  # bob was on node b; 4503 is /api/disconnect's default

    carol = await connector(b)("carol", jti="t-carol")
    resp = await a.post("/api/tokens/revoke", json={"jti": "t-carol"}, headers=ADMIN)
    assert resp.status == 200
    assert await carol.closed(timeout=2) == 4503  # on the other node, within 2 s (issue 11)
    with pytest.raises(WSServerHandshakeError) as refused:  # node b refuses it from now on too
        await b.ws_connect("/ws", params={"token": make_token("carol", jti="t-carol")})
    assert refused.value.status == 401


async def test_each_node_subscribes_only_what_its_connections_need(
        nodes: tuple[TestClient, TestClient]) -> None:
    a, b = nodes
    alice = await connector(a)("alice")
    await _joined(alice, "only-on-a")
    channels_b = b.app[NODE]._channels  # type: ignore[attr-defined]
    assert ("room", "only-on-a") in a.app[NODE]._channels  # type: ignore[attr-defined]
    assert ("room", "only-on-a") not in channels_b and ("user", "alice") not in channels_b
    await alice.request("leave", room="only-on-a")
    assert ("room", "only-on-a") not in a.app[NODE]._channels  # type: ignore[attr-defined]


async def test_a_killed_nodes_users_go_offline_on_the_other_within_the_bound(
        make_server: MakeServer, redis_url: str, tmp_path: Any) -> None:
    """Node B is a real process, killed with SIGKILL: node A takes B's user out of presence
    and of the room within ``backend.redis.node_ttl`` (1 s here) and a reap period."""
    backend = {"type": "redis", "redis": {"url": redis_url, "node_ttl": 1}}
    a = await make_server({"server": {"node_id": "node-a"}, "backend": backend,
                           "plugins": {"enabled": ["chat"]}, "api": {"keys": ["k" * 32]}})
    b = await start_server(tmp_path, yaml.safe_dump({
        "server": {"node_id": "node-b"}, "backend": backend, "plugins": {"enabled": ["chat"]},
        "logging": {"format": "json"}}))
    try:
        alice = await connector(a)("alice")
        await _joined(alice, "lobby")
        async with aiohttp.ClientSession() as session:
            bob = await session.ws_connect(f"{b.url}/ws", params={"token": make_token("bob")})
            assert (await bob.receive_json())["type"] == "connected"
            await bob.send_json({"type": "join", "id": "j1", "room": "lobby"})
            assert (await bob.receive_json())["type"] == "joined"
            assert (await alice.recv_type("user_joined"))["data"]["user"]["id"] == "bob"
            await b.kill()  # SIGKILL: no goodbye to Redis
            started = time.monotonic()
            while True:
                count = (await (await a.get("/api/online/count", headers=ADMIN)).json())["online_count"]
                members = await a.app[NODE].backend.rooms.members("lobby")
                if count == 1 and members == ["alice"]:
                    break
                assert time.monotonic() - started < 4.0, (count, members)  # ttl 1 s + reap
                await asyncio.sleep(0.1)  # the event is a lapse of time inside Redis
    finally:
        await b.kill()


async def test_a_node_started_after_a_revocation_refuses_the_token(
        make_server: MakeServer, redis_url: str) -> None:
    backend = {"type": "redis", "redis": {"url": redis_url}}
    a = await make_server({"backend": backend, "api": {"keys": ["k" * 32]}})
    resp = await a.post("/api/tokens/revoke", json={"jti": "t-old"}, headers=ADMIN)
    assert resp.status == 200
    later = await make_server({"backend": backend})
    with pytest.raises(WSServerHandshakeError) as refused:
        await later.ws_connect("/ws", params={"token": make_token("dave", jti="t-old")})
    assert refused.value.status == 401


async def test_the_per_user_cap_counts_every_node(nodes: tuple[TestClient, TestClient]) -> None:
    a, b = nodes
    for node in nodes:
        node.app[NODE].config = node.app[NODE].config.model_copy(update={
            "security": node.app[NODE].config.security.model_copy(
                update={"max_connections_per_user": 1})})
    alice = await connector(a)("alice")
    second = await connector(b)("alice", expect_connected=False)
    assert await second.closed() == 1013
    assert (await alice.request("ping"))["type"] == "pong"  # the first one stays
    started = time.monotonic()  # the refused one is forgotten once its close is handled
    while (await (await a.get("/api/users/alice/status", headers=ADMIN)).json())["connections"] != 1:
        assert time.monotonic() - started < 3.0
        await asyncio.sleep(0.05)
