"""The typing plugin: relayed to a room's members or to a user, never to the sender; ends by
itself after typing.timeout; its own rate limit drops silently; a slow client drops typing
frames instead of being closed."""

from __future__ import annotations

import asyncio
from typing import Any

from server.keys import NODE
from tests.conftest import Connect, connector

TYPING = "plugins.typing_indicator:TypingPlugin"


async def typing_server(make_server: Any, overrides: dict[str, Any] | None = None) -> Connect:
    base: dict[str, Any] = {"plugins": {"enabled": ["chat", TYPING]}}
    return connector(await make_server({**base, **(overrides or {})}))


def typing_frames(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "typing"]


async def test_room_typing_reaches_members_but_no_connection_of_the_sender(make_server: Any) -> None:
    connect = await typing_server(make_server)
    tab1, tab2 = await connect("a", username="ann"), await connect("a", username="ann")
    member, outsider = await connect("b"), await connect("c")
    for ws in (tab1, tab2, member):
        await ws.request("join", room="r")
    await tab1.send("typing", id="t1", room="r", data={"is_typing": True, "context": "thread-7"})
    got = await member.recv_type("typing")
    assert got["room"] == "r" and got["from"] == {"id": "a", "username": "ann"}
    assert got["data"] == {"is_typing": True, "context": "thread-7"}
    await tab1.send("typing", room="r", data={"is_typing": False, "context": "thread-7"})
    assert (await member.recv_type("typing"))["data"] == {"is_typing": False, "context": "thread-7"}
    # no reply to the sender, nothing to its other tab or to a non-member
    assert typing_frames(await tab2.until_pong()) == [] and typing_frames(await outsider.until_pong()) == []
    assert [f for f in await tab1.until_pong() if f.get("reply_to") == "t1" or f["type"] == "typing"] == []


async def test_typing_to_a_user_reaches_each_of_their_connections(make_server: Any) -> None:
    connect = await typing_server(make_server)
    sender, sender_tab = await connect("a", username="ann"), await connect("a")
    b1, b2, other = await connect("b"), await connect("b"), await connect("c")
    await sender.send("typing", to="b", data={"is_typing": True})
    for ws in (b1, b2):
        got = await ws.recv_type("typing")
        assert got["to"] == "b" and got["from"]["id"] == "a" and got["data"] == {"is_typing": True}
        assert "room" not in got
    assert typing_frames(await sender_tab.until_pong()) == [] and typing_frames(await other.until_pong()) == []


async def test_unstopped_indicator_ends_by_itself_after_the_timeout(make_server: Any) -> None:
    timeout = 0.3
    connect = await typing_server(make_server, {"typing": {"timeout": timeout}})
    a, b = await connect("a"), await connect("b")
    for ws in (a, b):
        await ws.request("join", room="r")
    loop = asyncio.get_running_loop()
    await a.send("typing", room="r", data={"is_typing": True, "context": "x"})
    await b.recv_type("typing")
    started = loop.time()
    stop = await b.recv_type("typing", timeout=5)
    assert loop.time() - started >= timeout * 0.8
    assert stop["from"]["id"] == "a" and stop["room"] == "r"
    assert stop["data"] == {"is_typing": False, "context": "x"}

    # a renewal restarts the clock: the stop comes a full timeout after the last start
    await a.send("typing", room="r", data={"is_typing": True})
    await b.recv_type("typing")
    await asyncio.sleep(timeout * 0.6)  # the behaviour under test is the passing of time
    await a.send("typing", room="r", data={"is_typing": True})
    await b.recv_type("typing")
    renewed = loop.time()
    assert (await b.recv_type("typing", timeout=5))["data"] == {"is_typing": False}
    assert loop.time() - renewed >= timeout * 0.8

    # a stopped indicator sends no stop of its own later
    await a.send("typing", room="r", data={"is_typing": True})
    await a.send("typing", room="r", data={"is_typing": False})
    assert [f["data"]["is_typing"] for f in [await b.recv_type("typing"), await b.recv_type("typing")]] \
        == [True, False]
    await asyncio.sleep(timeout * 2)
    assert typing_frames(await b.until_pong()) == []


async def test_closing_the_typing_connection_stops_its_indicator_at_once(make_server: Any) -> None:
    connect = await typing_server(make_server, {"typing": {"timeout": 60}})
    a, a_other_tab, b = await connect("a"), await connect("a"), await connect("b")
    for ws in (a, a_other_tab, b):
        await ws.request("join", room="r")
    await a.send("typing", room="r", data={"is_typing": True, "context": "c1"})
    await a.send("typing", to="b", data={"is_typing": True})
    assert len([await b.recv_type("typing"), await b.recv_type("typing")]) == 2
    await a.close()
    stops = [await b.recv_type("typing", timeout=5), await b.recv_type("typing", timeout=5)]
    assert {(s.get("room"), s.get("to"), s["data"]["is_typing"]) for s in stops} == \
        {("r", None, False), (None, "b", False)}
    # the user's other tab still open changes nothing: the stop went out, to the others only
    assert typing_frames(await a_other_tab.until_pong()) == []


async def test_typing_refusals_keep_the_connection(make_server: Any) -> None:
    connect = await typing_server(make_server, {"rooms": {"namespaces": {"news": {"client_publish": False}}}})
    a = await connect("a")
    await a.request("join", room="news:today")
    cases = [
        ({"room": "elsewhere", "data": {"is_typing": True}}, "NOT_IN_ROOM"),
        ({"data": {"is_typing": True}}, "INVALID_MESSAGE"),
        ({"room": "news:today", "to": "b", "data": {"is_typing": True}}, "INVALID_MESSAGE"),
        ({"to": "a", "data": {"is_typing": True}}, "INVALID_MESSAGE"),
        ({"to": "b", "data": {"is_typing": "yes"}}, "INVALID_MESSAGE"),
        ({"to": "b", "data": {}}, "INVALID_MESSAGE"),
        ({"to": "b", "data": {"is_typing": True, "context": "x" * 201}}, "INVALID_MESSAGE"),
        ({"room": "news:today", "data": {"is_typing": True}}, "FORBIDDEN"),
    ]
    for fields, code in cases:
        reply = await a.request("typing", **fields)
        assert (reply["type"], reply["data"]["code"]) == ("error", code), fields
    assert (await a.request("ping"))["type"] == "pong"


async def test_typing_over_its_own_limit_is_dropped_without_an_error(make_server: Any) -> None:
    connect = await typing_server(make_server, {"typing": {"burst": 3, "messages_per_minute": 1}})
    a, b = await connect("a"), await connect("b")
    for ws in (a, b):
        await ws.request("join", room="r")
    for i in range(10):
        await a.send("typing", id=f"t{i}", room="r", data={"is_typing": True})
    assert [f for f in await a.until_pong() if f["type"] != "user_joined"] == []  # no errors, no close
    assert len(typing_frames(await b.until_pong())) == 3
    # the bucket is empty, yet stopping an indicator this connection holds still goes through
    await a.send("typing", room="r", data={"is_typing": False})
    await a.send("typing", room="r", data={"is_typing": False})  # nothing left to stop: dropped
    assert [f["data"] for f in typing_frames(await b.until_pong())] == [{"is_typing": False}]


async def test_typing_does_not_spend_the_message_rate_limit(make_server: Any) -> None:
    connect = await typing_server(make_server, {
        "rate_limit": {"burst": 5, "messages_per_minute": 1, "user_burst": 5, "user_messages_per_minute": 1,
                       "max_violations": 2},
        "typing": {"burst": 100}})
    a, b = await connect("a"), await connect("b")
    for ws in (a, b):
        await ws.request("join", room="r")
    for _ in range(40):  # far past the general burst and its violation limit
        await a.send("typing", room="r", data={"is_typing": True})
    ack = await a.request("message", room="r", data={"content": "still within budget"})
    assert ack["type"] == "ack"
    assert len(typing_frames(await b.until_pong())) == 40


async def test_slow_client_drops_typing_frames_and_stays_connected(make_server: Any) -> None:
    client = await make_server({
        "plugins": {"enabled": ["chat", TYPING]},
        "rate_limit": {"enabled": False},
        "typing": {"burst": 1000, "messages_per_minute": 60000},
        "server": {"write_buffer_size": 256 * 1024, "max_queued_messages": 20,
                   "max_message_size": 1 << 20},
        "messages": {"max_message_length": 70000},
    })
    connect = connector(client)
    sender, slow = await connect("s"), await connect("slow")
    for ws in (sender, slow):
        await ws.request("join", room="r")
    slow_conn = next(c for c in client.app[NODE].hub.connections.values() if c.user.id == "slow")
    # fill the socket until the slow client's writer is stuck (it does not read meanwhile)
    for _ in range(2000):
        assert (await sender.request("message", room="r", data={"content": "m" * 60000}))["type"] == "ack"
        if slow_conn.write_started and slow_conn.queued:
            break
    assert slow_conn.write_started and slow_conn.queued < 20, "the writer never got stuck"
    sent = 300
    for _ in range(sent):
        await sender.send("typing", room="r", data={"is_typing": True})
    await sender.until_pong()  # every typing frame has been handled
    # now read until the server's queue for it is empty (a pong would not be dropped), then
    # ping: the connection is open, and most typing frames were dropped, not queued
    frames = [await slow.recv()]
    while slow_conn.queued:
        frames.append(await slow.recv())
    frames += await slow.until_pong()
    assert 0 < len(typing_frames(frames)) < sent
    assert not slow.ws.closed and slow.ws.close_code is None
