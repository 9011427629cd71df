"""``POST /api/messages`` goes the way of a ``message`` frame: the same permission checks,
rate limits (shared with the user's WebSocket connections), length limit and filter, and the
chat plugin's delivery; and the inbox over HTTP."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import Connect, connector, make_token


def bearer(user: str, **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user, username=f'user-{user}', **kw)}"}


async def post(client: TestClient, body: dict[str, Any],
               headers: dict[str, str]) -> tuple[int, Any, Any]:
    async with client.post("/api/messages", json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_a_room_message_reaches_the_members_as_from_the_bearer(client: TestClient,
                                                                    connect: Connect) -> None:
    alice_tab = await connect("alice", query={"rooms": "lobby"}, username="alice")
    bob = await connect("bob", query={"rooms": "lobby"})
    status, body, _ = await post(client, {"room": "lobby", "content": "hello", "data": {"mood": "ok"}},
                                 bearer("alice"))
    assert status == 200 and body["id"] and body["offset"]
    got = await bob.recv_type("message")
    assert got["id"] == body["id"] and got["offset"] == body["offset"]
    assert got["from"] == {"id": "alice", "username": "user-alice"}
    assert got["data"] == {"mood": "ok", "content": "hello"}
    echo = await alice_tab.recv_type("message")  # the sender's open tab gets the copy
    assert echo["id"] == body["id"]


async def test_the_bearer_must_be_in_the_room(client: TestClient, connect: Connect) -> None:
    await connect("bob", query={"rooms": "lobby"})
    status, body, _ = await post(client, {"room": "lobby", "content": "hi"}, bearer("stranger"))
    assert status == 403 and body["error"]["code"] == "NOT_IN_ROOM"


async def test_the_permission_of_the_type_applies(make_server: Any) -> None:
    client = await make_server({"permissions": {"types": {"message": ["staff"]}}})
    connect = connector(client)
    await connect("u", query={"rooms": "lobby"})
    await connect("s", query={"rooms": "lobby"}, roles=["staff"])
    status, body, _ = await post(client, {"room": "lobby", "content": "hi"}, bearer("u"))
    assert status == 403 and body["error"]["code"] == "FORBIDDEN"
    status, _, _ = await post(client, {"room": "lobby", "content": "hi"}, bearer("s", roles=["staff"]))
    assert status == 200


async def test_length_and_filter_apply(make_server: Any) -> None:
    client = await make_server({"messages": {"max_message_length": 10,
                                             "filter": {"enabled": True, "words": ["darn"]}}})
    await connector(client)("u", query={"rooms": "lobby"})
    status, body, _ = await post(client, {"room": "lobby", "content": "x" * 11}, bearer("u"))
    assert status == 413 and body["error"]["code"] == "MESSAGE_TOO_LONG"
    status, body, _ = await post(client, {"room": "lobby", "content": "oh darn"}, bearer("u"))
    assert status == 422 and body["error"]["code"] == "MESSAGE_FILTERED"


async def test_masking_changes_what_members_get(make_server: Any) -> None:
    client = await make_server({"messages": {"filter": {"enabled": True, "action": "mask",
                                                        "words": ["darn"]}}})
    connect = connector(client)
    await connect("u", query={"rooms": "lobby"})
    other = await connect("v", query={"rooms": "lobby"})
    status, body, _ = await post(client, {"room": "lobby", "content": "oh darn it"}, bearer("u"))
    assert status == 200
    assert (await other.recv_type("message"))["data"]["content"] == "oh **** it"
    assert body["content"] == "oh **** it" and body["filtered"] is True  # as the others got it
    status, body, _ = await post(client, {"room": "lobby", "content": "all fine"}, bearer("u"))
    assert status == 200 and "filtered" not in body and "content" not in body


async def test_the_rate_limit_is_the_users_over_http_and_websocket(make_server: Any) -> None:
    client = await make_server({"rate_limit": {"user_messages_per_minute": 1, "user_burst": 2,
                                               "max_violations": 100}})
    ws = await connector(client)("u", query={"rooms": "lobby"})
    assert (await ws.request("message", room="lobby", data={"content": "ws"}))["type"] == "ack"
    status, _, _ = await post(client, {"room": "lobby", "content": "http"}, bearer("u"))
    assert status == 200
    status, body, headers = await post(client, {"room": "lobby", "content": "more"}, bearer("u"))
    assert status == 429 and body["error"]["code"] == "RATE_LIMITED"
    assert body["error"]["retry_after"] > 0 and int(headers["Retry-After"]) >= 1
    reply = await ws.request("message", room="lobby", data={"content": "ws again"})
    assert reply["data"]["code"] == "RATE_LIMITED"  # the same bucket


async def test_a_per_type_limit_holds_across_http_calls(make_server: Any) -> None:
    client = await make_server({"rate_limit": {"per_type": {"message": {"messages_per_minute": 1,
                                                                        "burst": 1}}}})
    await connector(client)("u", query={"rooms": "lobby"})
    assert (await post(client, {"room": "lobby", "content": "1"}, bearer("u")))[0] == 200
    assert (await post(client, {"room": "lobby", "content": "2"}, bearer("u")))[0] == 429


async def test_a_private_message_to_an_offline_user_waits_in_their_inbox(client: TestClient,
                                                                        connect: Connect) -> None:
    status, sent, _ = await post(client, {"to": "bob", "content": "call me"}, bearer("alice"))
    assert status == 200 and sent["offset"]
    async with client.get("/api/messages/inbox", headers=bearer("bob")) as resp:
        assert resp.status == 200
        inbox = (await resp.json())["messages"]
    assert [(m["id"], m["data"]["content"], m["from"]["id"]) for m in inbox] == \
        [(sent["id"], "call me", "alice")]
    async with client.get(f"/api/messages/inbox?since={inbox[0]['offset']}",
                          headers=bearer("bob")) as resp:
        assert (await resp.json())["messages"] == []
    async with client.get("/api/messages/inbox", headers=bearer("alice")) as resp:
        assert (await resp.json())["messages"] == []  # the bearer's own inbox only
    bob = await connect("bob")
    assert (await bob.recv_type("message"))["id"] == sent["id"]


async def test_a_private_message_to_an_online_user_is_pushed(client: TestClient,
                                                            connect: Connect) -> None:
    bob = await connect("bob")
    status, sent, _ = await post(client, {"to": "bob", "content": "psst"}, bearer("alice"))
    assert status == 200
    got = await bob.recv_type("message")
    assert got["id"] == sent["id"] and got["to"] == "bob" and got["data"]["content"] == "psst"


# --- services: no open connection needed -------------------------------------------------------
API_KEY = "k-" + "s" * 30


async def history(client: TestClient, room: str, user: str) -> list[dict[str, Any]]:
    async with client.get(f"/api/rooms/{room}/history", headers=bearer(user)) as resp:
        assert resp.status == 200, await resp.text()
        messages: list[dict[str, Any]] = (await resp.json())["messages"]
        return messages


async def test_a_service_posts_to_a_room_without_a_connection(make_server: Any) -> None:
    """A role in permissions.post_without_connection (default admin, service): any existing
    room, no socket; kept in the history with its offset, delivered from the service, through
    the filter and the rate limit like any message. A plain user still needs a connection."""
    client = await make_server({"messages": {"filter": {"enabled": True, "action": "mask",
                                                        "words": ["darn"]}},
                                "rate_limit": {"user_messages_per_minute": 1, "user_burst": 2}})
    member = await connector(client)("m", query={"rooms": "ops"})
    service = bearer("deployer", roles=["service"])
    status, body, _ = await post(client, {"room": "ops", "content": "deploy darn done"}, service)
    assert status == 200, body
    assert body["id"] and body["offset"] and body["filtered"] is True
    got = await member.recv_type("message")
    assert got["from"] == {"id": "deployer", "username": "user-deployer"}
    assert got["data"]["content"] == "deploy **** done" and got["offset"] == body["offset"]
    kept = await history(client, "ops", "m")
    assert [(m["id"], m["offset"]) for m in kept] == [(body["id"], body["offset"])]
    assert (await post(client, {"room": "ops", "content": "2"}, service))[0] == 200
    status, body, _ = await post(client, {"room": "ops", "content": "3"}, service)
    assert status == 429 and body["error"]["code"] == "RATE_LIMITED"  # the user's bucket
    status, body, _ = await post(client, {"room": "nowhere", "content": "x"}, service)
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    status, body, _ = await post(client, {"room": "ops", "content": "hi"}, bearer("plain"))
    assert status == 403 and body["error"]["code"] == "NOT_IN_ROOM"


async def test_an_api_key_posts_to_a_room_and_to_a_user(make_server: Any) -> None:
    client = await make_server({"api": {"keys": [API_KEY]},
                                "permissions": {"post_without_connection": []}})
    connect = connector(client)
    member = await connect("m", query={"rooms": "ops"})
    status, body, _ = await post(client, {"room": "ops", "content": "from the pipeline"},
                                 {"X-API-Key": API_KEY})
    assert status == 200 and body["offset"], body
    got = await member.recv_type("message")
    assert got["from"] == {"id": "api_key", "username": "api_key"}
    status, body, _ = await post(client, {"to": "m", "content": "just you"}, {"X-API-Key": API_KEY})
    assert status == 200, body
    assert (await member.recv_type("message"))["data"]["content"] == "just you"
    # the role list is empty here: a service role gets no exemption, the key still does
    status, body, _ = await post(client, {"room": "ops", "content": "x"},
                                 bearer("svc", roles=["service"]))
    assert status == 403 and body["error"]["code"] == "NOT_IN_ROOM"



async def get(client: TestClient, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with client.get(path, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_the_bearer_lists_their_conversations_latest_first_with_unread_counts(
        client: TestClient, connect: Connect) -> None:
    await post(client, {"to": "bob", "content": "hi bob"}, bearer("alice"))
    await post(client, {"to": "bob", "content": "you there?"}, bearer("alice"))
    await post(client, {"to": "bob", "content": "lunch?"}, bearer("carol"))
    await post(client, {"to": "alice", "content": "from bob"}, bearer("bob"))
    status, body = await get(client, "/api/messages/conversations", bearer("bob"))
    assert status == 200
    rows = [(c["user_id"], c["username"], c["last_message"]["data"]["content"], c["unread"])
            for c in body["conversations"]]
    # alice's last message is bob's own, so her name comes from elsewhere: unknown offline
    assert rows == [("alice", None, "from bob", 2), ("carol", "user-carol", "lunch?", 1)]
    assert body["conversations"][0]["updated_at"] >= body["conversations"][1]["updated_at"]
    assert body["conversations"][0]["last_message"]["offset"]
    status, body = await get(client, "/api/messages/conversations?limit=1", bearer("bob"))
    assert [c["user_id"] for c in body["conversations"]] == ["alice"]
    _, body = await get(client, "/api/messages/conversations", bearer("alice"))
    assert [(c["user_id"], c["username"], c["unread"]) for c in body["conversations"]] == \
        [("bob", "user-bob", 1)]  # alice has no socket either: bob's message waits for her
    _, body = await get(client, "/api/messages/conversations", bearer("dave"))
    assert body == {"conversations": []}
    bob = await connect("bob", username="user-bob")  # reads his inbox and acknowledges it
    waiting = [await bob.recv_type("message") for _ in range(3)]
    await bob.request("inbox.ack", data={"offset": waiting[-1]["offset"]})
    _, body = await get(client, "/api/messages/conversations", bearer("bob"))
    assert [c["unread"] for c in body["conversations"]] == [0, 0]
    _, body = await get(client, "/api/messages/conversations", bearer("alice"))
    assert body["conversations"][0]["username"] == "user-bob"


async def test_the_bearer_pages_one_conversation(client: TestClient) -> None:
    sent = [(await post(client, {"to": "bob", "content": str(i)}, bearer("alice")))[1]
            for i in range(3)]
    for who, peer in (("bob", "alice"), ("alice", "bob")):
        status, page = await get(client, f"/api/messages/conversations/{peer}", bearer(who))
        assert status == 200 and page["user_id"] == peer
        assert [m["data"]["content"] for m in page["messages"]] == ["0", "1", "2"]
        assert [m["id"] for m in page["messages"]] == [s["id"] for s in sent]
        assert page["offset"] == sent[-1]["offset"] and page["recovered"] and not page["has_more"]
    _, page = await get(client, f"/api/messages/conversations/alice?since={sent[0]['offset']}"
                                "&limit=1", bearer("bob"))
    assert [m["data"]["content"] for m in page["messages"]] == ["1"] and page["has_more"]
    _, page = await get(client, "/api/messages/conversations/alice", bearer("carol"))
    assert page["messages"] == []  # a third user: nothing of alice's and bob's
    status, body = await get(client, "/api/messages/conversations/alice", {})
    assert status == 401
    async with client.get("/api/messages/conversations", headers={"X-API-Key": "k"}) as resp:
        assert resp.status in (401, 403)  # an API key is no user: it has no conversations
