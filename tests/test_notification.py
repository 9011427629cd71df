"""The notification plugin: pushed to every connection of the user, stored unread (bounded)
and sent again on each connect until read; only roles in permissions.notify may send one; the
method the HTTP API calls for node."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from server.keys import REGISTRY
from tests.conftest import WS, Connect, connector

NOTIFICATION = "plugins.notification:NotificationPlugin"
NOTE = {"notification_type": "new_follower", "title": "New follower", "message": "bob follows you",
        "link": "/users/bob", "data": {"follower_id": "b"}}


async def notification_server(make_server: Any, overrides: dict[str, Any] | None = None) -> Any:
    return await make_server({"plugins": {"enabled": ["chat", NOTIFICATION]}, **(overrides or {})})


async def notify(sender: WS, to: str, **data: Any) -> str:
    ack = await sender.request("notification", to=to, data={**NOTE, **data})
    assert ack["type"] == "ack", ack
    return str(ack["data"]["id"])


async def test_notification_reaches_every_connection_of_the_user(make_server: Any) -> None:
    connect = connector(await notification_server(make_server))
    admin = await connect("admin", username="root", roles=["admin"])
    tab1, tab2, other = await connect("u"), await connect("u"), await connect("c")
    nid = await notify(admin, "u")
    for tab in (tab1, tab2):
        got = await tab.recv_type("notification")
        assert got["id"] == nid and got["to"] == "u" and got["from"] == {"id": "admin", "username": "root"}
        assert got["data"] == {**NOTE, "replayed": False}
    assert [f for f in await other.until_pong() if f["type"] == "notification"] == []
    # delivered but not read: the next connection gets it again, same id and time
    later = await connect("u")
    replayed = await later.recv_type("notification")
    assert (replayed["id"], replayed["ts"]) == (got["id"], got["ts"])
    assert replayed["data"] == {**NOTE, "replayed": True} and replayed["from"]["id"] == "admin"


async def test_only_roles_in_permissions_notify_may_send(make_server: Any) -> None:
    connect = connector(await notification_server(make_server))
    user, service = await connect("a"), await connect("svc", roles=["service"])
    refused = await user.request("notification", to="b", data=NOTE)
    assert (refused["type"], refused["data"]["code"]) == ("error", "FORBIDDEN")
    await notify(service, "b")

    connect = connector(await notification_server(make_server, {"permissions": {"notify": ["bot"]}}))
    admin, bot = await connect("admin", roles=["admin"]), await connect("bot", roles=["bot", "x"])
    assert (await admin.request("notification", to="b", data=NOTE))["data"]["code"] == "FORBIDDEN"
    await notify(bot, "b")
    target = await connect("b")
    assert [f["from"]["id"] for f in await target.until_pong() if f["type"] == "notification"] == ["bot"]


async def test_notification_refusals_keep_the_connection(make_server: Any) -> None:
    connect = connector(await notification_server(make_server))
    admin = await connect("admin", roles=["admin"])
    cases = [
        ("notification", {"data": NOTE}),  # no 'to'
        ("notification", {"to": "b", "data": {"title": "no type"}}),
        ("notification", {"to": "b", "data": {**NOTE, "notification_type": ""}}),
        ("notification", {"to": "b", "data": {**NOTE, "body": "misspelt message"}}),
        ("notification", {"to": "b", "data": {**NOTE, "data": "not an object"}}),
        ("notification.read", {"data": {"ids": "n1"}}),
        ("notification.read", {"data": {}}),
    ]
    for type_, fields in cases:
        reply = await admin.request(type_, **fields)
        assert (reply["type"], reply["data"]["code"]) == ("error", "INVALID_MESSAGE"), fields
    assert (await admin.request("ping"))["type"] == "pong"
    target = await connect("b")
    assert [f for f in await target.until_pong() if f["type"] == "notification"] == []


async def test_unread_notifications_come_again_on_each_connect_until_read(make_server: Any) -> None:
    connect = connector(await notification_server(make_server))
    admin = await connect("admin", roles=["admin"])
    first = await notify(admin, "u", notification_type="mention")  # u is offline
    second = await notify(admin, "u", notification_type="new_like")

    async def replayed() -> list[str]:
        ws = await connect("u")
        frames = [f for f in await ws.until_pong() if f["type"] == "notification"]
        assert all(f["data"]["replayed"] for f in frames)
        await ws.close()
        return [f["id"] for f in frames]

    assert await replayed() == [first, second]
    assert await replayed() == [first, second]  # not read yet: again
    reader = await connect("u")
    ack = await reader.request("notification.read", data={"ids": [first, first, "unknown-id"]})
    assert ack["type"] == "ack" and ack["data"] == {"read": 1}
    assert (await reader.request("notification.read", data={"ids": [first]}))["data"] == {"read": 0}
    assert await replayed() == [second]
    # another user cannot mark u's notifications read
    assert (await admin.request("notification.read", data={"ids": [second]}))["data"] == {"read": 0}
    assert (await reader.request("notification.read", data={"ids": [second]}))["data"] == {"read": 1}
    assert await replayed() == []


async def test_each_user_keeps_only_the_newest_notifications(make_server: Any) -> None:
    connect = connector(await notification_server(make_server, {"notifications": {"max_per_user": 3}}))
    admin = await connect("admin", roles=["admin"])
    ids = [await notify(admin, "u", title=f"n{i}") for i in range(5)]
    await notify(admin, "other")
    ws = await connect("u")
    frames = [f for f in await ws.until_pong() if f["type"] == "notification"]
    assert [f["id"] for f in frames] == ids[2:]
    assert [f["data"]["title"] for f in frames] == ["n2", "n3", "n4"]


async def test_services_notify_through_the_plugin_method(make_server: Any) -> None:
    client = await notification_server(make_server)
    connect: Connect = connector(client)
    plugin = client.app[REGISTRY].handlers["notification"].plugin
    ws = await connect("u")
    note = await plugin.notify("u", {"notification_type": "comment_reply", "title": "Re: hi"})
    got = await ws.recv_type("notification")
    assert got["id"] == note["id"] and "from" not in got and got["to"] == "u"
    assert got["data"] == {"notification_type": "comment_reply", "title": "Re: hi", "message": "",
                           "link": None, "data": {}, "replayed": False}
    with pytest.raises(ValidationError):
        await plugin.notify("u", {"title": "no type"})
    assert [f for f in await ws.until_pong() if f["type"] == "notification"] == []
    again = await connect("u")
    assert [f["id"] for f in await again.until_pong() if f["type"] == "notification"] == [note["id"]]


async def test_unread_replay_on_connect_fits_the_outbound_queue(make_server: Any) -> None:
    """Many large unread notifications must not close the reconnecting client with 4008."""
    client = await make_server({
        "plugins": {"enabled": ["chat", "plugins.notification:NotificationPlugin"]},
        "server": {"write_buffer_size": 64 * 1024, "max_queued_messages": 1000},
        "notifications": {"max_per_user": 100},
        "rate_limit": {"enabled": False},
    })
    connect = connector(client)
    admin = await connect("admin", roles=["admin"])
    body = "n" * 4000
    for i in range(40):  # ~160 KB unread: more than the 64 KiB queue
        reply = await admin.request("notification", to="bob",
                                    data={"notification_type": "mention", "title": f"t{i}",
                                          "message": body})
        assert reply["type"] == "ack", reply
    bob = await connect("bob")
    await bob.send("ping", id="marker")  # answered after everything queued on connect
    replayed = []
    while (frame := await bob.recv())["type"] != "pong":
        assert frame["type"] == "notification" and frame["data"]["replayed"] is True
        replayed.append(frame["data"]["title"])
    assert not bob.ws.closed
    assert 0 < len(replayed) < 40
    assert replayed == [f"t{i}" for i in range(len(replayed))]  # oldest first
