"""Memory that users and rooms leave behind: after everyone disconnected and the TTLs, grace
periods and sweeps passed, every per-user and per-room structure of the backend, the hub, the
upgrade guard and the plugins is back to its size before they came; a forgotten stream's
numbering goes on where it was; rate-limit buckets of users gone are dropped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from server.backends import create_backend
from server.keys import REGISTRY, NODE
from server.buckets import BucketMap
from server.reload import RELOADER
from tests.conftest import Connect, connector, make_config, make_token

TTL = 1.0  # seconds: history, inbox, conversations, notifications and last_seen
PLUGINS = ["chat", "plugins.typing_indicator:TypingPlugin", "plugins.presence:PresencePlugin",
           "plugins.notification:NotificationPlugin"]
CONFIG: dict[str, Any] = {
    "plugins": {"enabled": PLUGINS},
    "backend": {"sweep_interval": 0.05},
    "presence": {"grace_period": 0.05, "last_seen_ttl": TTL},
    "rooms": {"history_ttl": TTL},
    "inbox": {"ttl": TTL},
    "conversations": {"history_ttl": TTL},
    "notifications": {"ttl": TTL},
}
ADMIN = {"Authorization": f"Bearer {make_token('boss', roles=['admin'])}"}
USERS = 12
ROOMS = 3


def sizes(app: web.Application) -> dict[str, int]:
    """The entries of each per-user, per-room and per-connection structure."""
    node = app[NODE]
    backend, hub = node.backend, node.hub
    plugins = {p.name: p for p in app[REGISTRY].plugins}
    slots = app[RELOADER].guard.slots
    return {
        "hub connections": len(hub.connections),
        "hub users": len(hub.by_user),
        "hub rooms": len(hub.by_room),
        "upgrade leases": slots.total + len(slots.by_ip) + len(slots.by_user),
        "rooms": len(backend.rooms._rooms),  # type: ignore[attr-defined]
        "room members": len(backend.rooms._members),  # type: ignore[attr-defined]
        "user rooms": len(backend.rooms._user_rooms),  # type: ignore[attr-defined]
        "online": len(backend.presence._online),  # type: ignore[attr-defined]
        "last_seen": len(backend.presence._last_seen),  # type: ignore[attr-defined]
        "history streams": len(backend.history._streams._streams),  # type: ignore[attr-defined]
        "inbox streams": len(backend.inbox._streams._streams),  # type: ignore[attr-defined]
        "conversation streams": len(backend._dm_history._streams._streams),  # type: ignore[attr-defined]
        "conversation lists": len(backend.conversations),  # type: ignore[arg-type]
        "plugin store keys": len(backend._store),  # type: ignore[attr-defined]
        "presence timers": len(plugins["presence"]._departures),  # type: ignore[attr-defined]
        "typing indicators": len(plugins["typing"]._active),  # type: ignore[attr-defined]
        "typing tasks": len(plugins["typing"]._tasks),  # type: ignore[attr-defined]
    }


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds or ``timeout`` passed (sweeps and TTLs are driven by
    time: there is no event to await); the caller asserts it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)


async def visit(connect: Connect, i: int) -> Any:
    """One user's stay: a room message, typing left on, a status, a private message and a
    notification to a user who never connects, in a client-created room and an operator's."""
    ws = await connect(f"u{i}", roles=["service"], query={"rooms": f"room-{i % ROOMS},lobby"})
    room = f"room-{i % ROOMS}"
    assert (await ws.request("message", room=room, data={"content": "hi"}))["type"] == "ack"
    await ws.send("typing", room=room, data={"is_typing": True})
    assert (await ws.request("presence", data={"status": "away", "device": "web"}))["type"] == "ack"
    assert (await ws.request("message", to=f"ghost{i}", data={"content": "psst"}))["type"] == "ack"
    note = await ws.request("notification", to=f"ghost{i}", data={"notification_type": "ping"})
    assert note["type"] == "ack"
    return ws


async def test_users_and_rooms_that_are_gone_leave_nothing_behind(make_server: Any) -> None:
    client = await make_server(CONFIG)
    app = client.app
    connect = connector(client)
    baseline = sizes(app)
    async with client.post("/api/rooms", json={"id": "lobby"}, headers=ADMIN) as resp:
        assert resp.status == 201
    listener = await connect("listener", query={"rooms": "lobby"})  # in the lobby only
    users = [listener, *await asyncio.gather(*(visit(connect, i) for i in range(USERS)))]
    await until(lambda: sizes(app)["typing indicators"] == USERS)  # the last frames handled
    held = sizes(app)
    assert held["typing indicators"] == USERS
    assert (held["hub connections"], held["user rooms"], held["online"]) == (USERS + 1,) * 3
    assert (held["rooms"], held["room members"], held["hub rooms"]) == (ROOMS + 1,) * 3
    async with client.delete("/api/rooms/lobby", headers=ADMIN) as resp:  # with its members in
        assert resp.status == 200
    for ws in users:
        await ws.close()
    await until(lambda: sizes(app)["hub connections"] == 0)
    left = sizes(app)  # what stays on purpose until the TTLs, and the users' last_seen
    assert left["hub connections"] == 0
    assert (left["history streams"], left["inbox streams"], left["plugin store keys"],
            left["last_seen"]) == (ROOMS, USERS, USERS, USERS + 1), left
    # each private message: one conversation, in the sender's list and the recipient's
    assert (left["conversation streams"], left["conversation lists"]) == (USERS, 2 * USERS), left

    await until(lambda: sizes(app) == baseline)
    assert sizes(app) == baseline

    # what the clients see once it is gone: never seen, nothing waiting
    ghost, probe = await connect("ghost0"), await connect("probe")
    assert [f for f in await ghost.until_pong() if f["type"] in ("message", "notification")] == []
    state = await probe.request("presence.query", data={"user_ids": ["u0"]})
    assert state["data"]["users"] == [{"user_id": "u0", "online": False, "status": "offline",
                                       "last_seen": None, "connections": 0}]


async def test_a_read_notification_is_dropped_at_once(make_server: Any) -> None:
    client = await make_server({"plugins": {"enabled": PLUGINS}})
    connect = connector(client)
    admin, reader = await connect("admin", roles=["admin"]), await connect("reader")
    await admin.request("notification", to="reader", data={"notification_type": "ping"})
    note = await reader.recv_type("notification")
    store = client.app[NODE].backend._store  # type: ignore[attr-defined]  # every plugin's keys
    assert list(store.keys) == [("notification", "unread:reader")]
    assert (await reader.request("notification.read", data={"ids": [note["id"]]}))["data"] == {"read": 1}
    assert store.keys == {}
    assert (await reader.request("notification.read", data={"ids": [note["id"]]}))["data"] == {"read": 0}


def seq(offset: str) -> int:
    return int(offset.rpartition(":")[2])


def msg(n: int) -> dict[str, Any]:
    return {"type": "message", "id": f"m{n}", "data": {"content": str(n)}}


async def test_a_forgotten_stream_numbers_on_from_where_it_was() -> None:
    backend = create_backend(make_config(), "node-1")
    history, inbox = backend.history, backend.inbox
    sent = [await history.append("r", msg(i), size=10, ttl=TTL) for i in range(3)]
    backend.sweep(time.time() + 2 * TTL)  # type: ignore[attr-defined]  # every message expired
    assert history._streams._streams == {}  # type: ignore[attr-defined]
    assert await history.current("r") == sent[-1]
    caught_up = await history.since("r", sent[-1], limit=10)
    assert caught_up.messages == [] and caught_up.recovered  # nothing was missed after the top
    assert not (await history.since("r", sent[0], limit=10)).recovered  # 2 and 3 expired
    assert seq(await history.append("r", msg(3), size=10, ttl=TTL)) == seq(sent[-1]) + 1

    first = await inbox.push("u", msg(1), size=10, ttl=TTL)
    await inbox.ack("u", first)
    backend.sweep(time.time())  # type: ignore[attr-defined]  # the emptied inbox is forgotten
    assert inbox._streams._streams == {}  # type: ignore[attr-defined]
    await inbox.push("u", msg(2), size=10, ttl=TTL)
    # a cursor from before must not hide the new message behind a reused number
    assert [m["data"]["content"] for m in await inbox.fetch("u", first)] == ["2"]


def test_rate_limit_buckets_of_users_gone_are_dropped_after_a_minute() -> None:
    users = BucketMap(per_minute=300, burst=50)
    t0 = time.monotonic()
    for i in range(3000):  # a burst of users, each sending a frame
        users.get(f"u{i}", t0).take(t0)
    assert len(users.buckets) == 3000  # all active: pruning keeps them
    late = users.get("late", t0 + 61)
    assert users.buckets == {"late": late}
