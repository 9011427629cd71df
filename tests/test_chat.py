"""The chat plugin through real WebSocket clients against the real app: rooms and their rules
(point 1 of issue 3), room and private messages (2), history and recovery (3), the inbox (4),
broadcast and operators' system messages (8)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient

from server.errors import MessageRejected
from server.keys import NODE
from server.node import Node
from tests.conftest import WS, Connect, connector

MakeServer = Callable[..., Awaitable[TestClient[Any, Any]]]
_ids = itertools.count()


async def serve(make_server: MakeServer, overrides: dict[str, Any] | None = None) -> tuple[Connect, Node]:
    """A server with ``overrides``; returns its connect function and its node."""
    client = await make_server(overrides or {})
    return connector(client), client.app[NODE]


async def quiet(ws: WS) -> None:
    """Nothing is waiting for ``ws``: the answer to a ping is its very next frame (what others
    sent before was fanned out before their ack, so it would be queued ahead of the pong)."""
    assert await ws.until_pong() == []


async def error_code(ws: WS, type_: str, **fields: Any) -> str:
    reply = await ws.request(type_, **fields)
    assert reply["type"] == "error", reply
    code: str = reply["data"]["code"]
    return code


async def answer(ws: WS, type_: str, **fields: Any) -> dict[str, Any]:
    """Send a frame; its answer must be the very next frame (no copy of it came back first)."""
    fid = f"answer-{next(_ids)}"
    await ws.send(type_, id=fid, **fields)
    got = await ws.recv()
    assert got.get("reply_to") == fid, f"expected the answer to {type_}, got {got}"
    return got


async def send(ws: WS, room: str, content: str, **extra: Any) -> dict[str, Any]:
    """A room message; returns the ack's data."""
    ack = await answer(ws, "message", room=room, data={"content": content, **extra})
    assert ack["type"] == "ack", ack
    data: dict[str, Any] = ack["data"]
    return data


async def join(ws: WS, room: str, **data: Any) -> dict[str, Any]:
    reply = await ws.request("join", room=room, data=data)
    assert reply["type"] == "joined", reply
    joined: dict[str, Any] = reply["data"]
    return joined


# --- 1. rooms -----------------------------------------------------------------------------------
async def test_join_and_leave_events_count_users_not_connections(connect: Connect) -> None:
    a, b1, b2 = await connect("a"), await connect("b", username="bob"), await connect("b", username="bob")
    assert (await join(a, "r"))["members_count"] == 1
    joined = await join(b1, "r")
    assert joined == {"room": "r", "members_count": 2, "recovered": True, "missed": [],
                      "offset": joined["offset"], "has_more": False}
    event = await a.recv_type("user_joined")
    assert event["room"] == "r"
    assert event["data"] == {"room": "r", "user": {"id": "b", "username": "bob"}, "members_count": 2}
    assert (await join(b2, "r"))["members_count"] == 2  # bob's second tab: no new member, no event
    await quiet(a)
    left = await b1.request("leave", room="r")
    assert left["type"] == "left" and left["data"] == {"room": "r", "members_count": 2}
    await quiet(a)  # bob is still there through his other tab
    await b2.request("leave", room="r")
    event = await a.recv_type("user_left")
    assert event["data"] == {"room": "r", "user": {"id": "b", "username": "bob"}, "members_count": 1}
    await send(a, "r", "after")
    for ws in (b1, b2):
        await quiet(ws)
    assert await error_code(b1, "leave", room="r") == "NOT_IN_ROOM"
    assert await error_code(b1, "join") == "INVALID_MESSAGE"


async def test_rooms_on_connect_and_operator_rooms_when_clients_cannot_create(
        make_server: MakeServer) -> None:
    connect, node = await serve(make_server, {"rooms": {
        "allow_client_create": False, "default_rooms": ["lobby"]}})
    await node.backend.rooms.create("ops-made", max_members=1)  # what POST /api/rooms does
    a = await connect("a", query={"rooms": "ops-made,lobby"})
    assert a.connected is not None and a.connected["data"]["rooms"] == ["lobby", "ops-made"]
    assert await error_code(a, "join", room="new-room") == "NOT_FOUND"
    b = await connect("b", query={"rooms": "ops-made"}, expect_connected=False)
    refused = await b.recv()  # full: the refusal comes before `connected`, which follows anyway
    assert refused["type"] == "error" and refused["data"]["code"] == "ROOM_FULL"
    connected = await b.recv()
    assert connected["type"] == "connected" and connected["data"]["rooms"] == ["lobby"]


async def test_room_caps(make_server: MakeServer) -> None:
    connect, _ = await serve(make_server, {"rooms": {"max_rooms": 3, "max_rooms_per_user": 2,
                                                     "max_members": 2}})
    a, b, c = await connect("a"), await connect("b"), await connect("c")
    await join(a, "r1")
    await join(a, "r2")
    assert await error_code(a, "join", room="r3") == "ROOM_LIMIT_REACHED"  # a is in 2 rooms
    await join(b, "r3")
    assert await error_code(c, "join", room="r4") == "ROOM_LIMIT_REACHED"  # 3 rooms exist
    await join(b, "r1")
    assert await error_code(c, "join", room="r1") == "ROOM_FULL"
    a2 = await connect("a")  # a second tab of a member takes no second place
    assert (await join(a2, "r1"))["members_count"] == 2


async def test_a_room_a_client_created_goes_when_empty_but_its_history_stays(
        make_server: MakeServer) -> None:
    connect, node = await serve(make_server, {"rooms": {"max_rooms": 2, "default_rooms": ["lobby"]}})
    a, b = await connect("a"), await connect("b")
    start = (await join(a, "temp"))["offset"]
    await send(a, "temp", "kept")
    await a.request("leave", room="temp")
    await join(b, "lobby")
    await b.request("leave", room="lobby")
    assert [r.id for r in await node.backend.rooms.list()] == ["lobby"]  # lobby is an operator's
    assert (await join(b, "other"))["members_count"] == 1  # temp's place is free again
    await b.request("leave", room="other")
    back = await join(a, "temp", since=start)
    assert back["recovered"] is True and [m["data"]["content"] for m in back["missed"]] == ["kept"]


async def test_room_names_are_checked(connect: Connect) -> None:
    a = await connect("a")
    for name in ("x" * 256, " padded", "tab\there"):
        assert await error_code(a, "join", room=name) == "INVALID_MESSAGE"
    assert (await join(a, "x" * 255))["members_count"] == 1


async def test_namespaces_take_their_own_options(make_server: MakeServer) -> None:
    connect, _ = await serve(make_server, {"rooms": {"namespaces": {
        "quiet": {"join_leave_events": False},
        "vip": {"allowed_roles": ["vip"], "max_members": 1},
        "short": {"history_size": 2},
    }}})
    a, b = await connect("a"), await connect("b", roles=["vip"])
    await join(a, "quiet:1")
    await join(b, "quiet:1")
    await b.request("leave", room="quiet:1")
    await quiet(a)  # neither user_joined nor user_left
    assert await error_code(a, "join", room="vip:lounge") == "FORBIDDEN"
    await join(b, "vip:lounge")
    c = await connect("c", roles=["vip"])
    assert await error_code(c, "join", room="vip:lounge") == "ROOM_FULL"
    await join(a, "short:x")
    first = await send(a, "short:x", "1")
    for n in "234":
        await send(a, "short:x", n)
    replay = await join(b, "short:x", since=first["offset"])
    assert replay["recovered"] is False and [m["data"]["content"] for m in replay["missed"]] == ["3", "4"]
    await join(a, "general")  # outside every namespace: the defaults (join events on)
    await join(b, "general")
    assert (await a.recv_type("user_joined"))["room"] == "general"


async def test_three_users_two_rooms_and_a_read_only_namespace(make_server: MakeServer) -> None:
    connect, node = await serve(make_server, {"rooms": {"namespaces": {
        "news": {"client_publish": False, "join_leave_events": False}}}})
    a, b, c = await connect("a", username="ann"), await connect("b"), await connect("c")
    for ws in (a, b, c):
        await join(ws, "general")
        await join(ws, "news:today")
    for ws in (a, b):
        await join(ws, "dev")
    for ws in (a, b, c):  # drain the join events of general and dev
        await ws.request("ping")
    ack = await send(a, "general", "hello all")
    for ws in (b, c):
        got = await ws.recv_type("message")
        assert got["room"] == "general" and got["data"] == {"content": "hello all"}
        assert got["from"] == {"id": "a", "username": "ann"} and got["offset"] == ack["offset"]
        assert got["id"] == ack["id"]
    await send(b, "dev", "devs only")
    assert (await a.recv_type("message"))["data"]["content"] == "devs only"
    await quiet(c)
    for ws in (a, b, c):
        assert await error_code(ws, "message", room="news:today", data={"content": "x"}) == "FORBIDDEN"
    # only the server (the HTTP API, through node) publishes there
    posted = await node.post_to_room("news:today", "message", {"content": "headline"})
    for ws in (a, b, c):
        got = await ws.recv_type("message")
        assert got["room"] == "news:today" and got["offset"] == posted["offset"] and "from" not in got
        await quiet(ws)


async def test_an_operator_deletes_a_room(make_server: MakeServer) -> None:
    connect, node = await serve(make_server)
    a, b = await connect("a"), await connect("b")
    start = (await join(a, "doomed"))["offset"]
    await join(b, "doomed")
    await a.recv_type("user_joined")
    await send(a, "doomed", "last words")
    await b.recv_type("message")
    assert await node.delete_room("doomed") is True
    assert await node.delete_room("doomed") is False
    for ws in (a, b):
        left = await ws.recv_type("left")
        assert left["data"] == {"room": "doomed", "members_count": 0, "reason": "deleted"}
        assert await error_code(ws, "message", room="doomed", data={"content": "x"}) == "NOT_IN_ROOM"
    again = await join(a, "doomed", since=start)  # the history went with it
    assert again["recovered"] is False and again["missed"] == []


# --- 2. messages --------------------------------------------------------------------------------
async def test_room_message_copies_go_to_the_senders_other_tabs_in_the_room(connect: Connect) -> None:
    a_sending, a_other, a_elsewhere = await connect("a"), await connect("a"), await connect("a")
    b, outsider = await connect("b"), await connect("c")
    for ws in (a_sending, a_other, b):
        await join(ws, "r")
    await a_sending.request("ping")
    ack = await send(a_sending, "r", "hi", mood="happy")
    assert set(ack) == {"id", "offset"}
    for ws in (a_other, b):  # both of a's tabs in the room see it, as do the other members
        got = await ws.recv_type("message")
        assert got["id"] == ack["id"] and got["data"] == {"content": "hi", "mood": "happy"}
    for ws in (a_sending, a_elsewhere, outsider):
        await quiet(ws)
    assert await error_code(outsider, "message", room="r", data={"content": "x"}) == "NOT_IN_ROOM"
    assert await error_code(outsider, "message", data={"content": "x"}) == "INVALID_MESSAGE"
    assert await error_code(a_sending, "message", room="r", data={"text": "no content"}) == "INVALID_MESSAGE"


async def test_echo_to_sender_off_sends_no_copies(make_server: MakeServer) -> None:
    connect, _ = await serve(make_server, {"messages": {"echo_to_sender": False}})
    a1, a2 = await connect("a", roles=["admin"]), await connect("a", roles=["admin"])
    b = await connect("b")
    for ws in (a1, a2, b):
        await join(ws, "r")
    await a1.recv_type("user_joined")
    await send(a1, "r", "room")
    assert (await b.recv_type("message"))["data"]["content"] == "room"
    assert (await answer(a1, "message", to="b", data={"content": "dm"}))["type"] == "ack"
    assert (await b.recv_type("message"))["to"] == "b"
    assert (await answer(a1, "broadcast", data={"content": "all"}))["type"] == "ack"
    assert (await b.recv_type("broadcast"))["data"]["content"] == "all"
    assert (await a2.recv())["type"] == "user_joined"  # b came in; and then no copies
    await quiet(a2)


async def test_private_messages_reach_every_tab_and_the_senders_other_tabs(connect: Connect) -> None:
    a1, a2 = await connect("a", username="ann"), await connect("a")
    b1, b2, c = await connect("b"), await connect("b"), await connect("c")
    ack = await answer(a1, "message", to="b", data={"content": "psst", "ref": 7})
    assert ack["type"] == "ack" and ack["data"]["offset"]  # its place in the conversation
    for ws in (b1, b2, a2):
        got = await ws.recv_type("message")
        assert got["to"] == "b" and got["from"] == {"id": "a", "username": "ann"}
        assert got["id"] == ack["data"]["id"] and got["data"] == {"content": "psst", "ref": 7}
        assert got["offset"] == ack["data"]["offset"]
        assert "room" not in got and "inbox" not in got
    for ws in (a1, c):
        await quiet(ws)
    await answer(a1, "message", to="a", data={"content": "note to self"})
    assert (await a2.recv_type("message"))["data"]["content"] == "note to self"
    await quiet(a1)
    b3 = await connect("b")  # b was online: nothing went to the inbox
    await quiet(b3)


async def test_private_message_targets_are_checked(connect: Connect) -> None:
    a = await connect("a")
    await join(a, "r")
    for to in ("", " b", "b\n", "x" * 256, 5):
        assert await error_code(a, "message", to=to, data={"content": "x"}) == "INVALID_MESSAGE"
    assert await error_code(a, "message", to="b", room="r", data={"content": "x"}) == "INVALID_MESSAGE"


async def test_broadcast_is_for_permitted_roles(make_server: MakeServer) -> None:
    connect, _ = await serve(make_server, {"permissions": {"broadcast": ["ops"]}})
    ops1, ops2 = await connect("o", roles=["ops"]), await connect("o", roles=["ops"])
    user, admin = await connect("u"), await connect("adm", roles=["admin"])
    ack = await answer(ops1, "broadcast", data={"content": "maintenance at 5", "level": "warn"})
    assert ack["type"] == "ack"
    for ws in (ops2, user, admin):
        got = await ws.recv_type("broadcast")
        assert got["id"] == ack["data"]["id"] and got["from"]["id"] == "o"
        assert got["data"] == {"content": "maintenance at 5", "level": "warn"}
    await quiet(ops1)
    for ws in (user, admin):
        assert await error_code(ws, "broadcast", data={"content": "x"}) == "FORBIDDEN"
    await quiet(ops2)


# --- 3. history and recovery --------------------------------------------------------------------
async def test_rejoin_with_since_replays_exactly_what_was_missed(connect: Connect) -> None:
    a, b = await connect("a"), await connect("b")
    await join(a, "r")
    await join(b, "r")
    await a.recv_type("user_joined")
    await send(a, "r", "seen")
    last_seen = (await b.recv_type("message"))["offset"]
    await b.close()
    await a.recv_type("user_left")
    acks = [await send(a, "r", f"missed {i}") for i in range(5)]
    b = await connect("b")
    back = await join(b, "r", since=last_seen)
    assert back["recovered"] is True and back["has_more"] is False
    assert [m["data"]["content"] for m in back["missed"]] == [f"missed {i}" for i in range(5)]
    assert [m["offset"] for m in back["missed"]] == [ack["offset"] for ack in acks]
    assert [m["id"] for m in back["missed"]] == [ack["id"] for ack in acks]
    assert back["offset"] == acks[-1]["offset"]
    assert all(m["type"] == "message" and m["from"]["id"] == "a" for m in back["missed"])
    up_to_date = await join(b, "r", since=back["offset"])  # already in: still answers
    assert up_to_date["recovered"] is True and up_to_date["missed"] == []


async def test_a_gap_larger_than_the_history_is_not_recovered(make_server: MakeServer) -> None:
    connect, _ = await serve(make_server, {"rooms": {"history_size": 3}})
    a = await connect("a")
    start = (await join(a, "r"))["offset"]
    for i in range(5):
        await send(a, "r", str(i))
    b = await connect("b")
    back = await join(b, "r", since=start)
    assert back["recovered"] is False
    assert [m["data"]["content"] for m in back["missed"]] == ["2", "3", "4"]  # what is kept


async def test_an_offset_from_before_a_restart_is_not_recovered(make_server: MakeServer) -> None:
    connect, _ = await serve(make_server)
    a = await connect("a")
    await join(a, "r")
    old = (await send(a, "r", "before the restart"))["offset"]
    connect, _ = await serve(make_server)  # a new process: memory is empty, numbering starts over
    a = await connect("a")
    await join(a, "r")
    for i in range(3):
        await send(a, "r", f"after {i}")
    back = await join(await connect("b"), "r", since=old)
    assert back["recovered"] is False  # not the silently wrong "after 1", "after 2"
    assert [m["data"]["content"] for m in back["missed"]] == ["after 0", "after 1", "after 2"]
    malformed = await join(await connect("c"), "r", since="not-an-offset")
    assert malformed["recovered"] is False and len(malformed["missed"]) == 3


async def test_history_expires_after_history_ttl(make_server: MakeServer) -> None:
    connect, _ = await serve(make_server, {"rooms": {"namespaces": {"brief": {"history_ttl": 0.2}}}})
    a = await connect("a")
    start = (await join(a, "brief:x"))["offset"]
    await join(a, "lasting")
    await send(a, "brief:x", "soon gone")
    await send(a, "lasting", "kept")
    await asyncio.sleep(0.4)  # the behaviour under test is the passing of time
    reply = await a.request("history", room="brief:x")
    assert reply["data"]["messages"] == []
    gone = await join(await connect("b"), "brief:x", since=start)
    assert gone["recovered"] is False and gone["missed"] == []
    kept = await a.request("history", room="lasting")
    assert [m["data"]["content"] for m in kept["data"]["messages"]] == ["kept"]


async def test_history_pages_for_members_only(connect: Connect) -> None:
    a, outsider = await connect("a"), await connect("b")
    start = (await join(a, "r"))["offset"]
    acks = [await send(a, "r", str(i)) for i in range(7)]
    latest = await a.request("history", room="r", data={"limit": 3})
    assert latest["type"] == "history" and latest["room"] == "r"
    assert [m["data"]["content"] for m in latest["data"]["messages"]] == ["4", "5", "6"]
    assert latest["data"]["offset"] == acks[-1]["offset"] and latest["data"]["has_more"] is False
    pages, since = [], start
    while True:
        page = (await a.request("history", room="r", data={"since": since, "limit": 3}))["data"]
        assert page["recovered"] is True
        pages.append([m["data"]["content"] for m in page["messages"]])
        if not page["has_more"]:
            break
        since = page["messages"][-1]["offset"]
    assert pages == [["0", "1", "2"], ["3", "4", "5"], ["6"]]
    assert await error_code(outsider, "history", room="r") == "NOT_IN_ROOM"
    for bad in ({"limit": 0}, {"limit": 1001}, {"since": ""}, {"since": 5}):
        assert await error_code(a, "history", room="r", data=bad) == "INVALID_MESSAGE"


async def test_replays_never_overflow_the_outbound_queue(make_server: MakeServer) -> None:
    # a 64 KiB queue: replays are cut at 32 KiB, here three 10 KB messages
    connect, _ = await serve(make_server, {
        "server": {"write_buffer_size": 65536},
        "messages": {"max_message_length": 20000},
        "rate_limit": {"enabled": False}})
    a = await connect("a")
    start = (await join(a, "r"))["offset"]
    for i in range(8):
        await send(a, "r", str(i) * 10000)
    b = await connect("b")
    back = await join(b, "r", since=start)
    assert back["recovered"] is True and back["has_more"] is True and len(back["missed"]) == 3
    got = [m["data"]["content"][0] for m in back["missed"]]
    since = back["missed"][-1]["offset"]
    while True:
        page = (await b.request("history", room="r", data={"since": since}))["data"]
        got += [m["data"]["content"][0] for m in page["messages"]]
        if not page["has_more"]:
            break
        since = page["messages"][-1]["offset"]
    assert got == list("01234567")
    latest = (await b.request("history", room="r"))["data"]  # the newest ones that fit
    assert [m["data"]["content"][0] for m in latest["messages"]] == ["5", "6", "7"]


# --- 4. inbox -----------------------------------------------------------------------------------
async def inbox_frames(ws: WS) -> list[dict[str, Any]]:
    """The inbox frames that came right after ``connected``, up to the answer to a ping."""
    await ws.send("ping", id="after-inbox")
    frames = []
    while (got := await ws.recv())["type"] != "pong":
        frames.append(got)
    return frames


async def test_an_offline_users_messages_wait_in_the_inbox_until_acknowledged(connect: Connect) -> None:
    a = await connect("a", username="ann")
    acks = [(await answer(a, "message", to="b", data={"content": f"dm {i}"}))["data"] for i in range(3)]
    for _ in range(2):  # on every connection, until acknowledged
        b = await connect("b")
        frames = await inbox_frames(b)
        assert [f["data"]["content"] for f in frames] == ["dm 0", "dm 1", "dm 2"]
        assert [f["id"] for f in frames] == [ack["id"] for ack in acks]
        assert all(f["type"] == "message" and f["inbox"] is True and f["to"] == "b"
                   and f["from"] == {"id": "a", "username": "ann"} for f in frames)
        # each copy carries its place in the inbox (for inbox.ack), not the conversation's
        assert len({f["offset"] for f in frames}) == 3
        assert not {f["offset"] for f in frames} & {ack["offset"] for ack in acks}
        await b.close()
    offsets = [f["offset"] for f in frames]
    b = await connect("b")
    assert len(await inbox_frames(b)) == 3
    # an offset of the conversation acknowledges nothing of the inbox
    assert (await b.request("inbox.ack", data={"offset": acks[2]["offset"]}))["type"] == "ack"
    assert len(await inbox_frames(await connect("b"))) == 3
    ack = await b.request("inbox.ack", data={"offset": offsets[1]})
    assert ack["type"] == "ack" and ack["data"] == {"offset": offsets[1]}
    assert (await b.request("inbox.ack", data={"offset": offsets[0]}))["type"] == "ack"  # no-op
    b2 = await connect("b")
    assert [f["data"]["content"] for f in await inbox_frames(b2)] == ["dm 2"]
    await b2.request("inbox.ack", data={"offset": offsets[2]})
    assert await inbox_frames(await connect("b")) == []  # never again


async def test_an_ack_past_the_newest_does_not_swallow_later_messages(connect: Connect) -> None:
    a, observer = await connect("a"), await connect("c")
    await join(observer, "lobby")
    await a.request("message", to="b", data={"content": "one"})
    b = await connect("b")
    epoch, _, _ = (await inbox_frames(b))[0]["offset"].rpartition(":")
    await join(b, "lobby")
    assert (await b.request("inbox.ack", data={"offset": f"{epoch}:999"}))["type"] == "ack"
    assert (await b.request("inbox.ack", data={"offset": "another-epoch:5"}))["type"] == "ack"
    await b.close()
    await observer.recv_type("user_left")  # the server has let b go: b is offline again
    await a.request("message", to="b", data={"content": "two"})
    assert [f["data"]["content"] for f in await inbox_frames(await connect("b"))] == ["two"]


async def test_the_inbox_is_bounded_by_size_and_ttl(make_server: MakeServer) -> None:
    connect, _ = await serve(make_server, {"inbox": {"size": 3}})
    a = await connect("a")
    for i in range(5):
        await a.request("message", to="b", data={"content": str(i)})
    assert [f["data"]["content"] for f in await inbox_frames(await connect("b"))] == ["2", "3", "4"]
    connect, _ = await serve(make_server, {"inbox": {"ttl": 0.2}})
    a = await connect("a")
    await a.request("message", to="b", data={"content": "fleeting"})
    await asyncio.sleep(0.4)  # the behaviour under test is the passing of time
    assert await inbox_frames(await connect("b")) == []


async def test_a_large_inbox_comes_in_batches_one_per_ack(make_server: MakeServer) -> None:
    connect, _ = await serve(make_server, {
        "server": {"write_buffer_size": 65536},
        "messages": {"max_message_length": 20000},
        "rate_limit": {"enabled": False}})
    a = await connect("a")
    for i in range(8):
        await a.request("message", to="b", data={"content": str(i) * 10000})
    b = await connect("b")
    got: list[str] = []
    while True:
        batch = await inbox_frames(b)
        if not batch:
            break
        assert len(batch) <= 3  # 32 KiB of a 64 KiB queue
        got += [f["data"]["content"][0] for f in batch]
        await b.send("inbox.ack", data={"offset": batch[-1]["offset"]})
        assert (await b.recv())["type"] == "ack"
    assert got == list("01234567")


# --- 4b. private conversations ----------------------------------------------------------------
def texts(messages: list[dict[str, Any]]) -> list[str]:
    return [m["data"]["content"] for m in messages]


async def test_a_private_conversation_has_a_history_only_its_two_parties_read(connect: Connect) -> None:
    a, b, c = await connect("a", username="ann"), await connect("b", username="bea"), await connect("c")
    sent = [(await a.request("message", to="b", data={"content": "hi"}))["data"],
            (await b.request("message", to="a", data={"content": "hello"}))["data"],
            (await a.request("message", to="b", data={"content": "bye"}))["data"]]
    await a.request("message", to="c", data={"content": "another conversation"})
    for ws, peer in ((a, "b"), (b, "a")):  # either party, the same conversation, oldest first
        reply = await ws.request("history", to=peer)
        assert reply["type"] == "history" and reply["to"] == peer
        page = reply["data"]
        assert page["to"] == peer and "room" not in page
        assert texts(page["messages"]) == ["hi", "hello", "bye"]
        assert [(m["id"], m["offset"]) for m in page["messages"]] == \
            [(s["id"], s["offset"]) for s in sent]
        assert [m["from"]["id"] for m in page["messages"]] == ["a", "b", "a"]
        assert page["offset"] == sent[-1]["offset"] and page["recovered"] and not page["has_more"]
    after = (await b.request("history", to="a", data={"since": sent[0]["offset"], "limit": 1}))["data"]
    assert texts(after["messages"]) == ["hello"] and after["recovered"] and after["has_more"]
    # a third user reads only their own conversations: nothing of a's and b's
    assert texts((await c.request("history", to="a"))["data"]["messages"]) == ["another conversation"]
    assert (await c.request("history", to="b"))["data"]["messages"] == []
    assert await error_code(a, "history", to="b", room="r") == "INVALID_MESSAGE"
    assert await error_code(a, "history", to=" b") == "INVALID_MESSAGE"


async def test_a_conversation_with_an_offline_user_is_kept_too_and_recovers_with_since(
        connect: Connect) -> None:
    a = await connect("a")
    first = (await a.request("message", to="b", data={"content": "one"}))["data"]
    await a.request("message", to="b", data={"content": "two"})  # b is offline: inbox and history
    b = await connect("b")
    assert texts(await inbox_frames(b)) == ["one", "two"]
    page = (await b.request("history", to="a", data={"since": first["offset"]}))["data"]
    assert texts(page["messages"]) == ["two"] and page["recovered"]
    unknown = (await b.request("history", to="a", data={"since": "another-epoch:1"}))["data"]
    assert texts(unknown["messages"]) == ["one", "two"] and unknown["recovered"] is False
    await a.request("message", to="a", data={"content": "a note"})  # to oneself: kept too
    assert texts((await a.request("history", to="a"))["data"]["messages"]) == ["a note"]


async def test_conversations_keep_what_the_config_says(make_server: MakeServer) -> None:
    connect, _ = await serve(make_server, {"conversations": {"history_size": 2}})
    a = await connect("a")
    for i in range(4):
        await a.request("message", to="b", data={"content": str(i)})
    page = (await a.request("history", to="b"))["data"]
    assert texts(page["messages"]) == ["2", "3"]
    connect, _ = await serve(make_server, {"conversations": {"history_ttl": 0.2}})
    a = await connect("a")
    await a.request("message", to="b", data={"content": "fleeting"})
    assert texts((await a.request("history", to="b"))["data"]["messages"]) == ["fleeting"]
    await asyncio.sleep(0.4)  # the behaviour under test is the passing of time
    assert (await a.request("history", to="b"))["data"]["messages"] == []
    connect, _ = await serve(make_server, {"conversations": {"history_size": 0}})
    a = await connect("a")
    ack = (await a.request("message", to="b", data={"content": "not kept"}))["data"]
    assert ack["id"] and (await a.request("history", to="b"))["data"]["messages"] == []
    assert texts(await inbox_frames(await connect("b"))) == ["not kept"]  # the inbox still has it


# --- 8. system messages -------------------------------------------------------------------------
async def test_operators_system_messages_reach_everyone_or_a_room(make_server: MakeServer) -> None:
    connect, node = await serve(make_server)
    a, b, c = await connect("a"), await connect("b"), await connect("c")
    data = {"content": "Server restarts at 03:00", "severity": "info", "nested": {"k": [1, 2]}}
    sent = await node.system_message(data)
    for ws in (a, b, c):
        got = await ws.recv_type("system_message")
        assert got["data"] == data and got["id"] == sent["id"] and "from" not in got
    start = (await join(a, "r"))["offset"]
    await join(b, "r")
    posted = await node.system_message({"content": "room archived tomorrow"}, room="r")
    for ws in (a, b):
        got = await ws.recv_type("system_message")
        assert got["room"] == "r" and got["offset"] == posted["offset"]
    await quiet(c)
    replay = await join(c, "r", since=start)  # kept in the room's timeline
    assert [(m["type"], m["data"]) for m in replay["missed"]] == [
        ("system_message", {"content": "room archived tomorrow"})]
    with pytest.raises(MessageRejected) as refused:
        await node.system_message({"content": "x"}, room="nowhere")
    assert refused.value.code == "NOT_FOUND"
    assert await error_code(a, "system_message", data={"content": "forged"}) == "UNKNOWN_MESSAGE_TYPE"


async def test_the_chat_types_are_listed_with_their_schemas(client: TestClient[Any, Any]) -> None:
    types = (await (await client.get("/api/protocol")).json())["types"]
    chat = {(t["type"], t["direction"]) for t in types if t["plugin"] == "chat"}
    assert chat == {(t, "client_to_server") for t in
                    ("join", "leave", "message", "broadcast", "history", "inbox.ack")} | {
                   (t, "server_to_client") for t in
                    ("joined", "left", "message", "broadcast", "history", "system_message")}
    history = next(t for t in types if t["type"] == "history" and t["direction"] == "client_to_server")
    assert history["schema"]["properties"]["limit"]["maximum"] == 1000
