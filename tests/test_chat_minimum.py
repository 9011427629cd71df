"""Issue 2's chat minimum: join, leave, room message with ack; the errors around them."""

from __future__ import annotations

from typing import Any

from tests.conftest import connector


async def test_join_leave_events_and_counts(connect: Any) -> None:
    a, b = await connect("a", username="ann"), await connect("b", username="bob")
    assert (await a.request("join", room="r"))["data"]["members_count"] == 1
    joined = await b.request("join", room="r")
    assert joined["type"] == "joined" and joined["room"] == "r"
    assert joined["data"]["members_count"] == 2 and joined["data"]["recovered"] is True
    event = await a.recv_type("user_joined")
    assert event["room"] == "r" and event["data"]["user"] == {"id": "b", "username": "bob"}
    left = await b.request("leave", room="r")
    assert left["type"] == "left" and left["data"]["members_count"] == 1
    assert (await a.recv_type("user_left"))["data"]["user"]["id"] == "b"
    # after leaving, b no longer gets the room's messages
    await a.request("message", room="r", data={"content": "after"})
    assert (await b.request("ping"))["type"] == "pong"


async def test_message_reaches_members_not_sender_and_acks(connect: Any) -> None:
    a, b, outsider = await connect("a"), await connect("b"), await connect("c")
    for ws in (a, b):
        await ws.request("join", room="r")
    ack = await a.request("message", room="r", data={"content": "hello", "extra": 1})
    assert ack["type"] == "ack" and set(ack["data"]) == {"id", "offset"}
    got = await b.recv_type("message")
    assert got["data"] == {"content": "hello", "extra": 1} and got["room"] == "r"
    ack2 = await a.request("message", room="r", data={"content": "second"})
    assert (await b.recv_type("message"))["offset"] == ack2["data"]["offset"] != ack["data"]["offset"]
    # the sender's own connection got the ack, not a copy; the outsider got nothing
    for ws in (a, outsider):
        assert (await ws.request("ping"))["type"] == "pong"


async def test_message_errors(connect: Any) -> None:
    a = await connect("a")
    not_in = await a.request("message", room="nowhere", data={"content": "x"})
    assert not_in["type"] == "error" and not_in["data"]["code"] == "NOT_IN_ROOM"
    no_room = await a.request("message", data={"content": "x"})
    assert no_room["data"]["code"] == "INVALID_MESSAGE"
    leave = await a.request("leave", room="nowhere")
    assert leave["data"]["code"] == "NOT_IN_ROOM"


async def test_rooms_on_connect_and_room_rules(make_server: Any) -> None:
    client = await make_server({"rooms": {"allow_client_create": False, "default_rooms": ["lobby"],
                                          "max_members": 1,
                                          "namespaces": {"ops": {"allowed_roles": ["admin"]}}}})
    connect = connector(client)
    a = await connect("a", query={"rooms": "lobby"})
    assert a.connected["data"]["rooms"] == ["lobby"]  # type: ignore[index]
    missing = await a.request("join", room="new-room")
    assert missing["data"]["code"] == "NOT_FOUND"
    b = await connect("b", expect_connected=False)
    refused = await b.recv()  # lobby is full: the refusal comes before `connected`
    assert refused["type"] == "error" and refused["data"]["code"] == "ROOM_FULL"
    assert (await b.recv_type("connected"))["data"]["rooms"] == []
    forbidden = await a.request("join", room="ops:alerts")
    assert forbidden["data"]["code"] == "FORBIDDEN"
