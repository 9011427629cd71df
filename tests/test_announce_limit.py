"""``rooms.announce_max_members`` through real WebSocket clients: a room with more members than
that is not told of each join, leave, arrival, departure or status (no ``user_joined``,
``user_left``, ``user_status``, ``presence`` through it), while ``joined``/``left``
``members_count``, the rooms API and ``presence.query`` stay right; a smaller room, a namespace's
own limit and 0 (no limit) announce as before.

Absence is proven without sleeping (tests/test_presence.py): ``WS.until_pong`` returns what
arrived before the pong, and the fan-out a frame would have been part of was enqueued before
the reply that follows it (the joiner's ``joined``, the leaver's ``left``, the status ``ack``,
the new connection's first pong, or a frame a small room's member got in the same fan-out).
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.config import Config
from tests.conftest import WS, Connect, connector, make_token

PRESENCE = "plugins.presence:PresencePlugin"
GRACE = 0.1


async def serve(make_server: Any, **rooms: Any) -> tuple[Connect, TestClient]:
    client = await make_server({"plugins": {"enabled": ["chat", PRESENCE]},
                                "presence": {"grace_period": GRACE}, "rooms": rooms})
    return connector(client), client


def types(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]


async def opened(connect: Connect, user: str, *rooms: str) -> WS:
    """A connection of ``user`` in ``rooms`` (``?rooms=``) whose on_connect hooks have run."""
    ws = await connect(user, query={"rooms": ",".join(rooms)} if rooms else None)
    assert await ws.until_pong() == []
    return ws


async def silent(*clients: WS) -> None:
    for ws in clients:
        assert await ws.until_pong() == []


async def api(client: TestClient, path: str) -> Any:
    headers = {"Authorization": f"Bearer {make_token('reader')}"}
    async with client.get(path, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def presence_of(ws: WS, *user_ids: str) -> list[tuple[str, bool, int]]:
    reply = await ws.request("presence.query", data={"user_ids": list(user_ids)})
    return [(u["user_id"], u["online"], u["connections"]) for u in reply["data"]["users"]]


async def test_a_room_within_the_limit_announces_joins_leaves_and_statuses(make_server: Any) -> None:
    connect, _ = await serve(make_server, announce_max_members=2)
    a = await opened(connect, "a", "hall")
    b = await opened(connect, "b", "hall")  # 2 members: at the limit, still announced
    joined, online = await a.until_pong()
    assert (joined["type"], joined["data"]["user"]["id"], joined["data"]["members_count"]) == \
        ("user_joined", "b", 2)
    assert (online["type"], online["data"]["user_id"], online["data"]["status"]) == \
        ("user_status", "b", "online")
    assert (await b.request("presence", data={"status": "away"}))["type"] == "ack"
    [status] = await a.until_pong()
    assert (status["type"], status["data"]) == ("presence", {"user_id": "b", "status": "away"})
    left = await b.request("leave", room="hall")
    assert left["data"]["members_count"] == 1
    [gone] = await a.until_pong()
    assert (gone["type"], gone["data"]["user"]["id"], gone["data"]["members_count"]) == \
        ("user_left", "b", 1)


async def test_past_the_limit_nothing_is_announced_and_the_counts_stay_right(
        make_server: Any) -> None:
    connect, client = await serve(make_server, announce_max_members=2)
    a = await opened(connect, "a", "hall")
    b = await opened(connect, "b", "hall")
    assert types(await a.until_pong()) == ["user_joined", "user_status"]
    e = await opened(connect, "e", "side")  # e shares only a small room with c
    # c makes hall 3 members: hall is told nothing, side (2 members) is told as before
    c = await opened(connect, "c", "hall", "side")
    assert sorted(c.connected["data"]["rooms"]) == ["hall", "side"]
    assert types(await e.until_pong()) == ["user_joined", "user_status"]
    await silent(a, b)
    # d joins with a frame: its joined carries the count, nobody else hears of it
    d = await opened(connect, "d")
    joined = await d.request("join", room="hall")
    assert joined["type"] == "joined" and joined["data"]["members_count"] == 4
    await silent(a, b, c, e)
    # the member list and presence are still right, for whoever asks
    assert (await api(client, "/api/rooms/hall"))["members"] == 4
    members = await api(client, "/api/rooms/hall/members")
    assert members["total"] == 4
    assert [m["user_id"] for m in members["members"]] == ["a", "b", "c", "d"]
    assert all(m["online"] for m in members["members"])
    assert await presence_of(a, "c", "d") == [("c", True, 1), ("d", True, 1)]
    # a status set in the big room reaches only the small room's member
    assert (await c.request("presence", data={"status": "busy"}))["type"] == "ack"
    assert [(f["type"], f["data"]["status"]) for f in await e.until_pong()] == [("presence", "busy")]
    await silent(a, b, d)
    # leaving a room of 4 is not announced; left carries the count
    left = await d.request("leave", room="hall")
    assert left["type"] == "left" and left["data"]["members_count"] == 3
    await silent(a, b, c)
    # c closes: hall (3 with c) hears neither user_left nor, after the grace period,
    # user_status offline; side does, the offline in the same fan-out hall's would have been in
    await c.close()
    assert (await e.recv_type("user_left"))["data"]["user"]["id"] == "c"
    offline = await e.recv_type("user_status", timeout=GRACE + 5)
    assert (offline["data"]["user_id"], offline["data"]["status"]) == ("c", "offline")
    await silent(a, b)
    assert await presence_of(a, "c") == [("c", False, 0)]
    assert (await api(client, "/api/rooms/hall"))["members"] == 2


async def test_a_namespace_sets_its_own_limit(make_server: Any) -> None:
    connect, _ = await serve(make_server, announce_max_members=1,
                             namespaces={"team": {"announce_max_members": 3}})
    a = await opened(connect, "a", "lobby", "team:x")
    b = await opened(connect, "b", "lobby", "team:x")
    c = await opened(connect, "c", "lobby", "team:x")
    # lobby (the rooms default, 1) is never told; team:x (its namespace's 3) is, once per user
    assert [(f["type"], f.get("room")) for f in await a.until_pong()] == [
        ("user_joined", "team:x"), ("user_status", None),
        ("user_joined", "team:x"), ("user_status", None)]
    assert types(await b.until_pong()) == ["user_joined", "user_status"]
    d = await opened(connect, "d", "lobby", "team:x")  # team:x is 4 now: past its own limit
    await silent(a, b, c)
    assert (await d.request("leave", room="team:x"))["data"]["members_count"] == 3
    await silent(a, b, c)
    assert (await c.request("leave", room="team:x"))["data"]["members_count"] == 2  # 3 with c
    for ws in (a, b):
        [left] = await ws.until_pong()
        assert (left["type"], left["data"]["user"]["id"], left["data"]["members_count"]) == \
            ("user_left", "c", 2)


@pytest.mark.parametrize("rooms", [
    {"announce_max_members": 0},
    {"announce_max_members": 1, "namespaces": {"all": {"announce_max_members": 0}}},
], ids=["everywhere", "in-a-namespace"])
async def test_zero_means_always_announce(make_server: Any, rooms: dict[str, Any]) -> None:
    connect, _ = await serve(make_server, **rooms)
    room = "all:x" if "namespaces" in rooms else "hall"
    first = await opened(connect, "u0", room)
    others = [await opened(connect, f"u{n}", room) for n in range(1, 6)]
    frames = await first.until_pong()
    assert [(f["type"], f["data"].get("members_count")) for f in frames] == [
        step for n in range(2, 7) for step in (("user_joined", n), ("user_status", None))]
    assert (await others[-1].request("presence", data={"status": "away"}))["type"] == "ack"
    assert types(await first.until_pong()) == ["presence"]
    await others[0].request("leave", room=room)
    [left] = await first.until_pong()
    assert (left["type"], left["data"]["members_count"]) == ("user_left", 5)


def test_the_limit_is_an_option_of_every_room_and_namespace() -> None:
    rooms = Config.model_validate({"rooms": {
        "announce_max_members": 5, "namespaces": {"team": {"announce_max_members": 0},
                                                   "other": {"presence": False}}}}).rooms
    assert Config().rooms.announce_max_members == 100
    assert rooms.options("hall").announce_max_members == 5
    assert rooms.options("other:x").announce_max_members == 5  # not set there: inherited
    team = rooms.options("team:x")
    assert team.announce_max_members == 0 and team.announces(10**9)
    hall = rooms.options("hall")
    assert hall.announces(5) and not hall.announces(6)
