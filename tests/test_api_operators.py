"""Operators' and services' calls, seen from live WebSocket clients: presence, stats, pushing
frames of any type to users and rooms (notifications stored), closing connections, revoking a
token, cleaning up, health and readiness."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp import WSServerHandshakeError
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.backends.memory import MemoryBackend
from server.keys import NODE
from tests.conftest import Connect, connector, make_config, make_token

KEY = "operator-key-0123456789abcdef"
OPS = {"X-API-Key": KEY}
USER = {"Authorization": f"Bearer {make_token('someone')}"}


@pytest.fixture
async def client(make_server: Any) -> TestClient:
    return await make_server({"api": {"keys": [KEY]}})


async def call(client: TestClient, method: str, path: str, body: Any = None,
               headers: dict[str, str] = OPS) -> tuple[int, Any]:
    async with client.request(method, path, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_online_users_and_status(client: TestClient, connect: Connect) -> None:
    before = time.time()
    await connect("amy", username="Amy")
    await connect("amy", username="Amy")
    await connect("ben")
    status, body = await call(client, "GET", "/api/online", headers=USER)
    assert status == 200 and body["online_count"] == 2
    amy = body["users"][0]
    assert (amy["user_id"], amy["username"], amy["status"], amy["connections"]) == \
        ("amy", "Amy", "online", 2)
    assert before <= amy["connected_at"] <= time.time()
    status, page = await call(client, "GET", "/api/online?limit=1&offset=1", headers=USER)
    assert [u["user_id"] for u in page["users"]] == ["ben"]
    assert (await call(client, "GET", "/api/online/count", headers=USER))[1] == {"online_count": 2}
    status, amy_status = await call(client, "GET", "/api/users/amy/status", headers=USER)
    assert amy_status == {"user_id": "amy", "online": True, "status": "online", "last_seen": None,
                          "connections": 2}
    status, nobody = await call(client, "GET", "/api/users/nobody/status", headers=USER)
    assert nobody == {"user_id": "nobody", "online": False, "status": "offline", "last_seen": None,
                      "connections": 0}


async def test_stats_count_this_node(client: TestClient, connect: Connect) -> None:
    began = time.time()  # the server started before this (the fixture)
    a = await connect("a", query={"rooms": "lobby"})
    await connect("a")
    await connect("b", query={"rooms": "lobby"})
    await a.request("message", room="lobby", data={"content": "hi"})
    asked = time.time()
    status, stats = await call(client, "GET", "/api/stats")
    assert status == 200
    assert (stats["total_connections"], stats["unique_users"], stats["total_rooms"]) == (3, 2, 1)
    assert stats["rooms"] == {"lobby": 2}
    assert stats["messages_in"] == 1 and stats["messages_out"] >= 5  # 3 connected, ack, copy
    assert stats["node"] == client.app[NODE].node_id
    # up at least since this test began, and for less than the test's own time limit (60 s)
    assert asked - began - 0.001 <= stats["uptime_seconds"] < 60


async def test_send_pushes_any_type_to_each_listed_user(client: TestClient, connect: Connect) -> None:
    a1, a2, b, c = await connect("a"), await connect("a"), await connect("b"), await connect("c")
    status, body = await call(client, "POST", "/api/send",
                              {"user_ids": ["a", "b"], "type": "billing.updated",
                               "data": {"plan": "pro"}})
    assert status == 200 and body == {"users": 2, "delivered": 3}
    for ws in (a1, a2, b):
        got = await ws.recv_type("billing.updated")
        assert got["data"] == {"plan": "pro"} and "from" not in got
    await c.send("ping", id="p")
    assert (await c.recv())["type"] == "pong"  # c got nothing before it
    status, body = await call(client, "POST", "/api/send", {"to_user_id": "c", "type": "x"})
    assert body == {"users": 1, "delivered": 1}


async def test_broadcast_to_everyone_or_to_a_room(client: TestClient, connect: Connect) -> None:
    inside, outside = await connect("a", query={"rooms": "ops"}), await connect("b")
    status, body = await call(client, "POST", "/api/broadcast",
                              {"type": "maintenance", "data": {"at": "22:00"}})
    assert status == 200 and body == {"delivered": 2}
    for ws in (inside, outside):
        assert (await ws.recv_type("maintenance"))["data"] == {"at": "22:00"}
    status, body = await call(client, "POST", "/api/broadcast",
                              {"type": "system_message", "data": {"text": "restarting"}, "room": "ops"})
    assert status == 200 and body == {"delivered": 1}
    note = await inside.recv_type("system_message")
    assert note["room"] == "ops" and note["data"] == {"text": "restarting"} and note["offset"]
    status, history = await call(client, "GET", "/api/rooms/ops/history")
    assert [m["type"] for m in history["messages"]] == ["system_message"]  # kept for catch-up
    status, body = await call(client, "POST", "/api/broadcast", {"type": "x", "room": "nowhere"})
    assert status == 404


async def test_a_notification_sent_over_http_is_stored_until_read(make_server: Any) -> None:
    client = await make_server({"api": {"keys": [KEY]},
                                "plugins": {"enabled": ["chat",
                                                        "plugins.notification:NotificationPlugin"]}})
    connect = connector(client)
    online = await connect("u")
    note = {"notification_type": "mention", "title": "You were mentioned"}
    status, body = await call(client, "POST", "/api/send",
                              {"to_user_id": "u", "type": "notification", "data": note})
    assert status == 200 and body == {"users": 1, "delivered": 1}
    pushed = await online.recv_type("notification")
    assert pushed["data"]["title"] == "You were mentioned" and pushed["data"]["replayed"] is False
    later = await connect("u")  # unread: sent again on the next connection
    replayed = await later.recv_type("notification")
    assert replayed["id"] == pushed["id"] and replayed["data"]["replayed"] is True
    status, body = await call(client, "POST", "/api/send",
                              {"to_user_id": "u", "type": "notification", "data": {"title": "x"}})
    assert status == 400 and body["error"]["field"] == "data.notification_type"


async def test_send_and_broadcast_check_their_body(client: TestClient) -> None:
    for body, field in (({"type": "x"}, "to_user_id"), ({"to_user_id": "u", "type": "bad type"}, "type"),
                        ({"to_user_id": "u", "type": "x", "data": [1]}, "data"),
                        ({"user_ids": ["u"] * 1001, "type": "x"}, "user_ids")):
        status, answer = await call(client, "POST", "/api/send", body)
        assert status == 400 and answer["error"]["field"] == field, answer
    status, answer = await call(client, "POST", "/api/broadcast", {"data": {}})
    assert status == 400 and answer["error"]["field"] == "type"


async def test_disconnect_closes_every_connection_of_the_user(client: TestClient,
                                                             connect: Connect) -> None:
    a1, a2, b = await connect("a"), await connect("a"), await connect("b")
    status, body = await call(client, "POST", "/api/disconnect",
                              {"user_id": "a", "code": 4000, "reason": "please reconnect"})
    assert status == 200 and body == {"closed": 2}
    assert [await a1.closed(), await a2.closed()] == [4000, 4000]
    await b.send("ping")
    assert (await b.recv())["type"] == "pong"
    status, body = await call(client, "POST", "/api/disconnect", {"user_id": "b"})
    assert body == {"closed": 1} and await b.closed() == 4503  # kicked, by default
    status, body = await call(client, "POST", "/api/disconnect", {"user_id": "b", "code": 1006})
    assert status == 400 and body["error"]["field"] == "code"


async def test_revoking_a_token_closes_its_connections_and_refuses_it(client: TestClient,
                                                                     connect: Connect) -> None:
    token = make_token("a", jti="stolen-1")
    victim, other = await connect("a", token=token), await connect("a")
    status, body = await call(client, "POST", "/api/tokens/revoke",
                              {"jti": "stolen-1", "exp": time.time() + 3600})
    assert status == 200 and body == {"jti": "stolen-1", "closed": 1}
    assert await victim.closed() == 4503
    await other.send("ping")
    assert (await other.recv())["type"] == "pong"
    async with client.get("/api/online", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 401 and (await resp.json())["error"]["message"] == "token revoked"
    with pytest.raises(WSServerHandshakeError) as refused:
        await client.ws_connect("/ws", params={"token": token})
    assert refused.value.status == 401


async def test_cleanup_closes_connections_whose_peer_went_silent(client: TestClient,
                                                                connect: Connect) -> None:
    silent, alive = await connect("a"), await connect("b")
    hub = client.app[NODE].hub
    await hub.stop()  # the sweeper would close it first; cleanup is the operator doing it now
    conn = next(c for c in hub.connections.values() if c.user.id == "a")
    conn.last_activity = time.monotonic() - hub.server.pong_wait - 1
    status, body = await call(client, "POST", "/api/cleanup")
    assert status == 200 and body == {"closed": 1}
    assert await silent.closed() == 4010
    await alive.send("ping")
    assert (await alive.recv())["type"] == "pong"
    assert (await call(client, "POST", "/api/cleanup"))[1] == {"closed": 0}


async def test_health_and_readiness(client: TestClient) -> None:
    status, body = await call(client, "GET", "/healthz", headers={})
    assert status == 200 and body["status"] == "ok"
    status, body = await call(client, "GET", "/readyz", headers={})
    assert status == 200 and body == {"status": "ready", "node": client.app[NODE].node_id,
                                      "backend": "memory"}
    client.app[NODE].hub.draining = True  # what SIGTERM's drain sets
    status, body = await call(client, "GET", "/readyz", headers={})
    assert status == 503 and body["error"]["code"] == "NOT_READY"
    status, _ = await call(client, "GET", "/healthz", headers={})
    assert status == 200  # alive while draining


class _Unreachable(MemoryBackend):
    """A backend whose server does not answer (the memory one cannot fail)."""

    async def ping(self) -> bool:
        raise ConnectionRefusedError("connection refused")


async def test_readiness_fails_while_the_backend_does_not_answer(aiohttp_client: Any) -> None:
    app = create_app(make_config())
    node = app[NODE]
    node.backend = _Unreachable(node.node_id)
    client = await aiohttp_client(app)
    status, body = await call(client, "GET", "/readyz", headers={})
    assert status == 503 and body["error"]["message"] == "the backend does not answer"
