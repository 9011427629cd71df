"""What a plugin author gets from the plugin API alone, through a reactions plugin written
against it (tests/plugins_for_tests.py ``Reactions``): its own error codes with ``details``,
a schema built from its config, a room message looked up by id, its own store, room hooks,
cleaned descriptions, and ``GET /api/protocol`` listing all of it."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from aiohttp.test_utils import TestClient

from server.keys import NODE, REGISTRY
from tests.conftest import connector

MakeServer = Callable[..., Awaitable[TestClient[Any, Any]]]
REACTIONS = "tests.plugins_for_tests:Reactions"


def config(**section: Any) -> dict[str, Any]:
    plugins: dict[str, Any] = {"enabled": ["chat", REACTIONS]}
    if section:
        plugins["reactions"] = section
    return {"plugins": plugins, "api": {"keys": ["k" * 32]}}


async def test_reactions_use_their_own_codes_details_and_store(make_server: MakeServer) -> None:
    client = await make_server(config())
    connect = connector(client)
    alice, bob = await connect("alice"), await connect("bob")
    for user in (alice, bob):
        assert (await user.request("join", room="lobby"))["type"] == "joined"
    sent = await alice.request("message", room="lobby", data={"content": "ship it"})
    message_id = sent["data"]["id"]

    ack = await bob.request("reaction.add", room="lobby", data={"message_id": message_id, "emoji": "+1"})
    assert ack["type"] == "ack"
    seen = await alice.recv_type("reaction")
    assert seen["data"] == {"message_id": message_id, "emoji": "+1"} and seen["from"]["id"] == "bob"

    again = await bob.request("reaction.add", room="lobby", data={"message_id": message_id, "emoji": "+1"})
    assert again["type"] == "error"
    assert again["data"]["code"] == "REACTION_DUPLICATE"
    assert again["data"]["details"] == {"message_id": message_id, "emoji": "+1"}

    missing = await bob.request("reaction.add", room="lobby", data={"message_id": "nope", "emoji": "+1"})
    assert missing["data"]["code"] == "NOT_FOUND" and missing["data"]["details"] == {"message_id": "nope"}
    not_allowed = await bob.request("reaction.add", room="lobby",
                                    data={"message_id": message_id, "emoji": "poop"})
    assert not_allowed["data"]["code"] == "INVALID_MESSAGE" and "data.emoji" in not_allowed["data"]["message"]
    assert "details" not in not_allowed["data"]
    assert (await bob.request("ping"))["type"] == "pong"


async def test_protocol_lists_the_plugin_codes_and_the_schema_built_from_config(
        make_server: MakeServer) -> None:
    client = await make_server(config(allowed=["tada", "eyes"]))
    body = await (await client.get("/api/protocol")).json()
    codes = {c["code"]: c for c in body["error_codes"]}
    assert codes["REACTION_DUPLICATE"]["plugin"] == "reactions"
    assert codes["NOT_IN_ROOM"]["plugin"] == "core"
    add = next(t for t in body["types"] if t["type"] == "reaction.add")
    schema = add["schema"]
    emoji = schema["properties"]["emoji"]
    assert emoji.get("enum") == ["tada", "eyes"], schema
    assert add["description"] == ("React to a message of a room you are in.\n\n"
                                  "`data.emoji` is one of the configured ones; see `ReactionsConfig`.")
    close = {c["code"]: c for c in body["close_codes"]["codes"]}
    assert close[4008]["action"] == "reconnect" and close[4500]["action"] == "stop"
    assert close[4001]["action"] == "token"
    assert {"from": 4500, "to": 4999, "action": "stop"} in body["close_codes"]["ranges"]


async def test_room_hooks_see_rooms_created_and_deleted(make_server: MakeServer) -> None:
    client = await make_server(config())
    plugin = next(p for p in client.app[REGISTRY].plugins if p.name == "reactions")
    alice = await connector(client)("alice")
    assert (await alice.request("join", room="fresh"))["type"] == "joined"
    assert plugin.room_events == [("created", "fresh")]
    headers = {"X-API-Key": "k" * 32}
    resp = await client.post("/api/rooms", json={"id": "ops"}, headers=headers)
    assert resp.status == 201, await resp.text()
    resp = await client.delete("/api/rooms/ops", headers=headers)
    assert resp.status in (200, 204), await resp.text()
    assert plugin.room_events == [("created", "fresh"), ("created", "ops"), ("deleted", "ops")]


async def test_a_hook_hears_when_a_rooms_history_expired(make_server: MakeServer) -> None:
    client = await make_server({**config(), "rooms": {"history_ttl": 60}})
    plugin = next(p for p in client.app[REGISTRY].plugins if p.name == "reactions")
    alice = await connector(client)("alice")
    await alice.request("join", room="lobby")
    await alice.request("message", room="lobby", data={"content": "soon gone"})
    client.app[NODE].backend.sweep(time.time() + 30)  # type: ignore[attr-defined]
    assert not plugin.history_gone.is_set()  # kept for 60 s
    client.app[NODE].backend.sweep(time.time() + 61)  # type: ignore[attr-defined]
    await asyncio.wait_for(plugin.history_gone.wait(), 5)
    assert plugin.room_events[-1] == ("history expired", "lobby")
