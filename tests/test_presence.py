"""The presence plugin through real WebSocket clients: statuses reach room-mates once each and
never strangers, nor through a ``presence: false`` namespace; ``user_status`` online and offline
with the grace period (a reconnect or a second tab announces nothing); last_seen;
``presence.query``; the refusals.

Proving that something was NOT sent: `WS.until_pong` pings and returns what arrived before the
pong. A connection's frames are handled in order, and fan-out is enqueued before the sender's
ack (or, for ``user_status`` online, before the new connection's first pong), so anything sent
earlier is in that list. Offline timers are checked with a bounded wait past their deadline.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.conftest import WS, Connect, connector, make_token

PRESENCE = "plugins.presence:PresencePlugin"
GRACE = 0.25


async def presence_server(make_server: Any, grace: float = GRACE, **sections: Any) -> Connect:
    overrides: dict[str, Any] = {"plugins": {"enabled": ["chat", PRESENCE]},
                                 "presence": {"grace_period": grace}}
    for name, section in sections.items():
        overrides[name] = {**overrides.get(name, {}), **section}
    return connector(await make_server(overrides))


def in_rooms(*names: str) -> dict[str, str]:
    return {"rooms": ",".join(names)}


async def drain(*clients: WS) -> None:
    """Settle every client twice: the first round lets every on_connect hook finish (it runs
    before the connection's first pong), the second takes what those hooks sent."""
    for _ in range(2):
        for ws in clients:
            await ws.until_pong()


async def frames_within(ws: WS, seconds: float) -> list[dict[str, Any]]:
    """Every frame that arrives within ``seconds``: a bounded wait for what must not come."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    frames = []
    while (left := deadline - loop.time()) > 0:
        try:
            frames.append(await ws.recv(left))
        except TimeoutError:
            break
    return frames


def types(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]


async def presence_of(ws: WS, *user_ids: str) -> list[dict[str, Any]]:
    reply = await ws.request("presence.query", data={"user_ids": list(user_ids)})
    assert reply["type"] == "presence.state", reply
    users: list[dict[str, Any]] = reply["data"]["users"]
    return users


async def test_status_with_extra_fields_reaches_room_mates_once_and_not_strangers(make_server: Any) -> None:
    connect = await presence_server(make_server)
    a1 = await connect("a", username="ann", query=in_rooms("r1", "r2"))
    a2 = await connect("a", username="ann")  # ann's second tab, in no room
    b = await connect("b", query=in_rooms("r1", "r2"))  # shares two rooms with ann
    stranger = await connect("c", query=in_rooms("elsewhere"))
    await drain(a1, a2, b, stranger)
    ack = await a1.request("presence", data={"status": "away", "device": "mobile"})
    assert ack["type"] == "ack"
    [event] = await b.until_pong()  # once, although b shares two rooms with ann
    assert event["type"] == "presence" and "room" not in event
    assert event["from"] == {"id": "a", "username": "ann"}
    assert event["data"] == {"user_id": "a", "status": "away", "device": "mobile"}
    # ann's other tab follows her status; the sending tab got the ack, not a copy
    assert [f["data"] for f in await a2.until_pong()] == [event["data"]]
    assert await a1.until_pong() == []
    assert await stranger.until_pong() == []


async def test_a_presence_false_namespace_carries_no_presence(make_server: Any) -> None:
    connect = await presence_server(make_server, rooms={"namespaces": {"quiet": {"presence": False}}})
    a = await connect("a", query=in_rooms("quiet:x", "loud"))
    b = await connect("b", query=in_rooms("quiet:x"))  # shares only the quiet room with a
    await b.until_pong()
    assert types(await a.until_pong()) == ["user_joined"]  # the join shows, b's coming online does not
    c = await connect("c", query=in_rooms("loud"))
    await c.until_pong()
    assert types(await a.until_pong()) == ["user_joined", "user_status"]
    await a.request("presence", data={"status": "busy"})
    assert types(await c.until_pong()) == ["presence"]
    assert await b.until_pong() == []
    await b.request("presence", data={"status": "away"})
    assert await a.until_pong() == []
    await a.close()
    offline = await c.recv_type("user_status", timeout=GRACE + 5)
    assert offline["data"]["user_id"] == "a" and offline["data"]["status"] == "offline"
    assert "user_status" not in types(await b.until_pong())  # told in the same fan-out as c, if ever


async def test_user_status_online_then_offline_with_last_seen_after_the_grace_period(
        make_server: Any) -> None:
    connect = await presence_server(make_server)
    a = await connect("a", query=in_rooms("r"))
    stranger = await connect("s")
    b = await connect("b", username="bob", query=in_rooms("r"))
    online = await a.recv_type("user_status")
    assert online["from"] == {"id": "b", "username": "bob"}
    assert online["data"] == {"user_id": "b", "status": "online", "last_seen": None}
    await b.request("presence", data={"status": "busy"})
    started, wall = time.monotonic(), time.time()
    await b.close()
    offline = await a.recv_type("user_status", timeout=GRACE + 5)
    assert time.monotonic() - started >= GRACE - 0.01
    last_seen = offline["data"]["last_seen"]
    assert offline["data"] == {"user_id": "b", "status": "offline", "last_seen": last_seen}
    assert wall - 0.01 <= last_seen <= time.time()
    # the status set before leaving went with the user
    assert await presence_of(a, "b") == [{"user_id": "b", "online": False, "status": "offline",
                                          "last_seen": last_seen, "connections": 0}]
    assert await stranger.until_pong() == []  # neither online nor offline reached a stranger
    # back later: online again, carrying when the previous visit ended, with a fresh status
    b = await connect("b", username="bob", query=in_rooms("r"))
    back = await a.recv_type("user_status")
    assert back["data"] == {"user_id": "b", "status": "online", "last_seen": last_seen}
    assert await presence_of(a, "b") == [{"user_id": "b", "online": True, "status": "online",
                                          "last_seen": last_seen, "connections": 1}]


async def test_a_reconnect_within_the_grace_period_announces_nothing(make_server: Any) -> None:
    grace = 0.5  # longer than the others: the reconnect below must land within it, even when loaded
    connect = await presence_server(make_server, grace)
    a = await connect("a", query=in_rooms("r"))
    b = await connect("b", query=in_rooms("r"))
    await a.recv_type("user_status")
    await b.request("presence", data={"status": "away", "device": "phone"})
    closed = time.monotonic()
    await b.close()
    assert (await a.recv_type("user_left"))["data"]["user"]["id"] == "b"
    # within the grace period b still counts as online, with no connection open
    [during] = await presence_of(a, "b")
    assert (during["online"], during["connections"], during["status"]) == (True, 0, "away")
    b = await connect("b", query=in_rooms("r"))
    await b.until_pong()  # b's on_connect has run
    assert types(await a.until_pong()) == ["user_joined"]
    [after] = await presence_of(a, "b")  # a reload keeps the status
    assert (after["online"], after["connections"], after["status"], after["device"]) == \
        (True, 1, "away", "phone")
    # the departure was called off: nothing comes past the moment it would have ended
    assert await frames_within(a, closed + grace + GRACE - time.monotonic()) == []
    [later] = await presence_of(a, "b")
    assert (later["online"], later["connections"], later["status"]) == (True, 1, "away")


async def test_closing_one_of_two_tabs_announces_nothing(make_server: Any) -> None:
    connect = await presence_server(make_server)
    a = await connect("a", query=in_rooms("r"))
    b1 = await connect("b", query=in_rooms("r"))
    await a.recv_type("user_status")
    b2 = await connect("b", query=in_rooms("r"))
    await b2.until_pong()
    assert await a.until_pong() == []  # a second tab is neither a user_status nor a user_joined
    await b1.close()
    assert await frames_within(a, GRACE * 2) == []  # past the moment an offline would fire
    [state] = await presence_of(a, "b")
    assert (state["online"], state["connections"], state["last_seen"]) == (True, 1, None)
    started = time.monotonic()
    await b2.close()
    offline = await a.recv_type("user_status", timeout=GRACE + 5)
    assert offline["data"]["status"] == "offline" and time.monotonic() - started >= GRACE - 0.01


async def test_query_reports_online_status_last_seen_and_connections(make_server: Any) -> None:
    connect = await presence_server(make_server, presence={"max_query_users": 4})
    a = await connect("a")
    b1, _ = await connect("b"), await connect("b")
    await b1.request("presence", data={"status": "busy", "device": "desk"})
    # anyone may ask about anyone by id; each id once, in the order asked
    assert await presence_of(a, "b", "ghost", "b", "a") == [
        {"user_id": "b", "online": True, "status": "busy", "device": "desk", "last_seen": None,
         "connections": 2},
        {"user_id": "ghost", "online": False, "status": "offline", "last_seen": None, "connections": 0},
        {"user_id": "a", "online": True, "status": "online", "last_seen": None, "connections": 1}]
    too_many = await a.request("presence.query", data={"user_ids": ["u1", "u2", "u3", "u4", "u5"]})
    assert too_many["type"] == "error" and too_many["data"]["code"] == "INVALID_MESSAGE"
    assert "presence.max_query_users" in too_many["data"]["message"]
    for data in ({"user_ids": "b"}, {"user_ids": [1]}, {}):
        refused = await a.request("presence.query", data=data)
        assert refused["data"]["code"] == "INVALID_MESSAGE" and "data.user_ids" in refused["data"]["message"]


async def test_bad_statuses_are_refused_and_change_nothing(make_server: Any) -> None:
    connect = await presence_server(make_server, presence={"max_extra_bytes": 32})
    a = await connect("a", query=in_rooms("r"))
    b = await connect("b", query=in_rooms("r"))
    await a.request("presence", data={"status": "away"})
    await drain(a, b)
    for data, named in (({"status": "sleeping"}, "data.status"), ({"device": "x"}, "data.status"),
                        ({"status": "busy", "online": False}, "data.online"),
                        ({"status": "busy", "note": "x" * 40}, "presence.max_extra_bytes")):
        refused = await a.request("presence", data=data)
        assert refused["type"] == "error" and refused["data"]["code"] == "INVALID_MESSAGE", data
        assert named in refused["data"]["message"]
    assert await b.until_pong() == []
    [state] = await presence_of(b, "a")
    assert state["status"] == "away" and "note" not in state
    assert (await a.request("presence", data={"status": "busy", "note": "x" * 10}))["type"] == "ack"
    assert (await b.recv_type("presence"))["data"] == {"user_id": "a", "status": "busy", "note": "x" * 10}


async def test_presence_turned_off_announces_nothing_and_refuses_statuses(make_server: Any) -> None:
    connect = await presence_server(make_server, presence={"enabled": False})
    a = await connect("a", query=in_rooms("r"))
    b = await connect("b", query=in_rooms("r"))
    await b.until_pong()
    assert types(await a.until_pong()) == ["user_joined"]
    refused = await a.request("presence", data={"status": "away"})
    assert refused["type"] == "error" and refused["data"]["code"] == "FORBIDDEN"
    assert await b.until_pong() == []
    assert await presence_of(a, "b") == [{"user_id": "b", "online": True, "status": "online",
                                          "last_seen": None, "connections": 1}]


async def test_presence_types_are_listed_by_the_protocol_endpoint(make_server: Any) -> None:
    client = await make_server({"plugins": {"enabled": ["chat", PRESENCE]}})
    listed = (await (await client.get("/api/protocol")).json())["types"]
    mine = {(t["type"], t["direction"]) for t in listed if t["plugin"] == "presence"}
    assert mine == {("presence", "client_to_server"), ("presence.query", "client_to_server"),
                    ("presence", "server_to_client"), ("presence.state", "server_to_client"),
                    ("user_status", "server_to_client")}


async def test_the_online_list_keeps_the_username_through_the_grace_period(make_server: Any) -> None:
    """GET /api/online while a user's last connection is closed but the grace period runs: still
    online, no connection, and the username (not null)."""
    client = await make_server({"plugins": {"enabled": ["chat", PRESENCE]},
                                "presence": {"grace_period": 60}})
    bee = await connector(client)("b", username="Bee")
    await bee.close()
    headers = {"Authorization": f"Bearer {make_token('watcher')}"}
    async with asyncio.timeout(5):
        while True:  # the server finishes the close after the client's side
            async with client.get("/api/online", headers=headers) as resp:
                users = {u["user_id"]: u for u in (await resp.json())["users"]}
            if users["b"]["connections"] == 0:
                break
            await asyncio.sleep(0.02)
    assert (users["b"]["username"], users["b"]["status"]) == ("Bee", "online")
