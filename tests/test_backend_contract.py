"""The RoomStore, PresenceStore and Broker contracts (server/backends/base.py) on every backend:
memory, Redis and Redis Cluster (tests/backends.py). The stores give copies; the broker hands a
publication to the subscribed nodes only, this one included, and a kept room message gets its
offset before anyone sees it."""

from __future__ import annotations

import asyncio
from typing import Any

from server.backends.base import Backend, Route
from tests.backends import backend  # noqa: F401  (the fixture)

pytest_plugins = ["tests.services"]


async def test_rooms_members_and_the_last_connection(backend: Backend) -> None:
    rooms = backend.rooms
    info, created = await rooms.create("lobby", name="Lobby", max_members=5)
    assert created and info.name == "Lobby" and info.max_members == 5 and info.persistent
    again, created = await rooms.create("lobby")
    assert not created and again.name == "Lobby"
    assert await rooms.add_member("lobby", "alice", "c1") == 1
    assert await rooms.add_member("lobby", "alice", "c2") == 1  # one user, two connections
    assert await rooms.add_member("lobby", "bob", "c3") == 2
    assert sorted(await rooms.members("lobby")) == ["alice", "bob"]
    assert await rooms.user_rooms("alice") == {"lobby"}
    assert await rooms.remove_member("lobby", "alice", "c1") == (2, False)
    assert await rooms.remove_member("lobby", "alice", "c2") == (1, True)
    assert await rooms.user_rooms("alice") == set()
    assert (await rooms.get("lobby")).members == 1  # type: ignore[union-attr]
    assert await rooms.count() == 1 and [r.id for r in await rooms.list()] == ["lobby"]
    assert await rooms.delete("lobby") and not await rooms.delete("lobby")
    assert await rooms.get("lobby") is None and await rooms.user_rooms("bob") == set()


async def test_a_room_a_client_made_goes_with_its_last_member(backend: Backend) -> None:
    rooms = backend.rooms
    await rooms.create("tmp", persistent=False)
    await rooms.add_member("tmp", "alice", "c1")
    assert await rooms.remove_member("tmp", "alice", "c1") == (0, True)
    assert await rooms.get("tmp") is None and await rooms.count() == 0


async def test_presence_online_once_and_offline_once(backend: Backend) -> None:
    presence = backend.presence
    assert await presence.add_connection("alice", "c1", {"username": "Alice", "connected_at": 1.0}) == 1
    assert await presence.add_connection("alice", "c2", {"username": "Alice", "connected_at": 2.0}) == 2
    assert await presence.mark_online("alice") and not await presence.mark_online("alice")
    await presence.set_status("alice", {"status": "busy", "device": "phone"})
    (view,) = await presence.snapshot(["alice"])
    assert (view.online, view.status, view.connections, view.extra) == (True, "busy", 2, {"device": "phone"})
    assert await presence.online_users() == ["alice"] and await presence.online_count() == 1
    connections = await presence.connections("alice")
    connections["c1"]["username"] = "changed"  # a copy
    assert (await presence.connections("alice"))["c1"]["username"] == "Alice"
    assert await presence.remove_connection("alice", "c1") == 1
    assert await presence.mark_offline("alice") is None  # c2 is still open
    assert await presence.remove_connection("alice", "c2") == 0
    (during,) = await presence.snapshot(["alice"])  # the grace period: no connection open
    assert (during.online, during.connections, during.username) == (True, 0, "Alice")
    seen = await presence.mark_offline("alice")
    assert seen is not None and await presence.last_seen("alice") == seen
    assert await presence.mark_offline("alice") is None
    (view,) = await presence.snapshot(["alice"])
    assert (view.online, view.status, view.last_seen) == (False, "offline", seen)
    assert await presence.online_count() == 0


async def test_unannounced_users_are_online_exactly_while_connected(backend: Backend) -> None:
    presence = backend.presence
    await presence.add_connection("bob", "c1", {"username": "bob", "connected_at": 1.0})
    assert await presence.online_count() == 1
    await presence.remove_connection("bob", "c1")
    assert await presence.online_count() == 0 and await presence.last_seen("bob") is not None


class Inbox:
    """What a node's deliver function got."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[str, str, bytes, Route]] = asyncio.Queue()

    def __call__(self, kind: Any, key: str, payload: bytes, route: Route) -> None:
        self.got.put_nowait((kind, key, payload, route))

    async def next(self) -> tuple[str, str, bytes, Route]:
        return await asyncio.wait_for(self.got.get(), 5)


async def test_the_broker_delivers_subscribed_channels_only(backend: Backend) -> None:
    inbox = Inbox()
    await backend.broker.close()
    await backend.broker.start(inbox)
    await backend.broker.subscribe("room", "a")
    await backend.broker.publish("room", "b", b'{"n":0}')  # nobody here subscribed to b
    await backend.broker.publish("room", "a", b'{"n":1}', Route(exclude="c9", droppable=True))
    assert await inbox.next() == ("room", "a", b'{"n":1}', Route(exclude="c9", droppable=True))
    message = {"type": "message", "id": "m1", "room": "a", "data": {"content": "hi"}}
    offset = await backend.broker.publish_kept("a", message, size=10, ttl=60)
    kind, key, payload, _ = await inbox.next()
    assert (kind, key) == ("room", "a") and message["offset"] == offset
    assert f'"offset":"{offset}"'.encode() in payload
    kept = await backend.history.since("a", None, limit=10)
    assert [m["id"] for m in kept.messages] == ["m1"] and kept.offset == offset
    await backend.broker.unsubscribe("room", "a")
    await backend.broker.publish("room", "a", b'{"n":2}')
    assert inbox.got.empty()
