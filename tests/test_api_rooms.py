"""Rooms over HTTP, seen from live WebSocket clients: create, list, members, history for
members only, join and leave for every connection of the bearer, delete (members get left)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import Connect, connector, make_token

ADMIN = {"Authorization": f"Bearer {make_token('boss', roles=['admin'])}"}


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user, username=f'user-{user}')}"}


async def call(client: TestClient, method: str, path: str, headers: dict[str, str],
               body: Any = None) -> tuple[int, Any]:
    async with client.request(method, path, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_a_room_created_over_http_is_listed_and_described(client: TestClient,
                                                                connect: Connect) -> None:
    status, room = await call(client, "POST", "/api/rooms", ADMIN,
                              {"id": "support", "name": "Support", "description": "ask here",
                               "max_members": 2})
    assert status == 201
    assert room["id"] == "support" and room["name"] == "Support" and room["max_members"] == 2
    assert room["members"] == 0 and room["messages"] == 0
    a = await connect("a", query={"rooms": "support"})
    await a.request("message", room="support", data={"content": "one"})
    status, room = await call(client, "GET", "/api/rooms/support", bearer("x"))
    assert status == 200 and room["members"] == 1 and room["messages"] == 1
    status, listing = await call(client, "GET", "/api/rooms", bearer("x"))
    assert listing["total"] == 1 and listing["rooms"][0]["id"] == "support"


async def test_the_member_cap_of_an_api_room_holds(client: TestClient, connect: Connect) -> None:
    await call(client, "POST", "/api/rooms", ADMIN, {"id": "duo", "max_members": 1})
    await connect("a", query={"rooms": "duo"})
    b = await connect("b")
    reply = await b.request("join", room="duo")
    assert reply["type"] == "error" and reply["data"]["code"] == "ROOM_FULL"


async def test_members_are_paged_by_user_id(client: TestClient, connect: Connect) -> None:
    for user in ("c", "a", "b"):
        await connect(user, query={"rooms": "hall"})
    status, page = await call(client, "GET", "/api/rooms/hall/members?limit=2", bearer("x"))
    assert status == 200 and page["total"] == 3
    assert [m["user_id"] for m in page["members"]] == ["a", "b"]
    assert page["members"][0] == {"user_id": "a", "username": "user-a", "online": True}
    status, page = await call(client, "GET", "/api/rooms/hall/members?offset=2", bearer("x"))
    assert [m["user_id"] for m in page["members"]] == ["c"]
    status, _ = await call(client, "GET", "/api/rooms/nowhere/members", bearer("x"))
    assert status == 404


async def test_history_is_for_members_and_admins(client: TestClient, connect: Connect) -> None:
    a = await connect("a", query={"rooms": "club"})
    acks = [await a.request("message", room="club", data={"content": str(n)}) for n in range(3)]
    status, page = await call(client, "GET", "/api/rooms/club/history", bearer("a"))
    assert status == 200 and [m["data"]["content"] for m in page["messages"]] == ["0", "1", "2"]
    assert page["recovered"] is True and page["offset"] == acks[-1]["data"]["offset"]
    since = acks[0]["data"]["offset"]
    status, page = await call(client, "GET", f"/api/rooms/club/history?since={since}&limit=1",
                              bearer("a"))
    assert [m["data"]["content"] for m in page["messages"]] == ["1"]
    status, body = await call(client, "GET", "/api/rooms/club/history", bearer("outsider"))
    assert status == 403 and body["error"]["code"] == "NOT_IN_ROOM"
    status, page = await call(client, "GET", "/api/rooms/club/history", ADMIN)
    assert status == 200 and len(page["messages"]) == 3


async def test_join_and_leave_act_on_every_connection_of_the_bearer(client: TestClient,
                                                                   connect: Connect) -> None:
    await call(client, "POST", "/api/rooms", ADMIN, {"id": "news"})
    phone, laptop = await connect("a"), await connect("a")
    other = await connect("b", query={"rooms": "news"})
    status, body = await call(client, "POST", "/api/rooms/news/join", bearer("a"))
    assert status == 200 and body == {"room": "news", "connections": 2, "members_count": 2}
    for ws in (phone, laptop):
        joined = await ws.recv_type("joined")
        assert joined["data"]["room"] == "news"
    assert (await other.recv_type("user_joined"))["data"]["user"]["id"] == "a"
    ack = await phone.request("message", room="news", data={"content": "now I can post"})
    assert ack["type"] == "ack"
    status, body = await call(client, "POST", "/api/rooms/news/leave", bearer("a"))
    assert status == 200 and body["connections"] == 2 and body["members_count"] == 1
    assert (await laptop.recv_type("left"))["data"]["room"] == "news"
    reply = await laptop.request("message", room="news", data={"content": "gone"})
    assert reply["data"]["code"] == "NOT_IN_ROOM"


async def test_join_refusals_are_the_frame_refusals(make_server: Any) -> None:
    client = await make_server({"rooms": {"allow_client_create": False,
                                          "namespaces": {"staff": {"allowed_roles": ["staff"]}}}})
    await connector(client)("a")
    status, body = await call(client, "POST", "/api/rooms/nowhere/join", bearer("a"))
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    await call(client, "POST", "/api/rooms", ADMIN, {"id": "staff:room"})
    status, body = await call(client, "POST", "/api/rooms/staff:room/join", bearer("a"))
    assert status == 403 and body["error"]["code"] == "FORBIDDEN"


async def test_a_user_with_no_connection_cannot_join_over_http(client: TestClient,
                                                              connect: Connect) -> None:
    """Nothing would join: 409 NO_CONNECTION, not a 200 that joined no connection; with one
    open, it joins."""
    await call(client, "POST", "/api/rooms", ADMIN, {"id": "empty"})
    status, body = await call(client, "POST", "/api/rooms/empty/join", bearer("ghost"))
    assert status == 409 and body["error"]["code"] == "NO_CONNECTION"
    status, _ = await call(client, "POST", "/api/rooms/missing/join", bearer("ghost"))
    assert status == 404  # a room that does not exist says so first
    status, _ = await call(client, "POST", "/api/rooms/missing/leave", bearer("ghost"))
    assert status == 404
    await connect("ghost")
    status, body = await call(client, "POST", "/api/rooms/empty/join", bearer("ghost"))
    assert status == 200 and body == {"room": "empty", "connections": 1, "members_count": 1}


async def test_deleting_a_room_tells_its_members(client: TestClient, connect: Connect) -> None:
    a = await connect("a", query={"rooms": "doomed"})
    await a.request("message", room="doomed", data={"content": "last words"})
    status, body = await call(client, "DELETE", "/api/rooms/doomed", ADMIN)
    assert status == 200 and body == {"id": "doomed", "connections": 1}
    left = await a.recv_type("left")
    assert left["data"] == {"room": "doomed", "members_count": 0, "reason": "deleted"}
    status, _ = await call(client, "GET", "/api/rooms/doomed", bearer("a"))
    assert status == 404
    status, _ = await call(client, "DELETE", "/api/rooms/doomed", ADMIN)
    assert status == 404
