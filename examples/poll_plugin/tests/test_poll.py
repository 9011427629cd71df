"""The poll plugin against a real server, enabled by its entry-point name ``poll``."""

from __future__ import annotations

from typing import Any

import pytest

from server.app import create_app
from server.errors import ConfigError
from server.testing import SwitchboardClient, SwitchboardServer, build_config


async def _room_with(server: SwitchboardServer, *users: str) -> list[SwitchboardClient]:
    clients = [await server.connect(u) for u in users]
    for client in clients:
        assert (await client.request("join", room="lobby"))["type"] == "joined"
    return clients


async def test_create_and_vote_broadcast_results_to_the_room(
        switchboard_server: SwitchboardServer) -> None:
    alice, bob = await _room_with(switchboard_server, "alice", "bob")
    ack = await alice.request("poll.create", room="lobby",
                              data={"question": "Lunch?", "options": ["pizza", "soup"]})
    assert ack["type"] == "ack"
    poll_id = ack["data"]["poll_id"]
    for client in (alice, bob):
        opened = await client.recv_type("poll.results")
        assert opened["room"] == "lobby"
        assert opened["data"] == {"poll_id": poll_id, "room": "lobby", "question": "Lunch?",
                                  "created_by": "alice", "total_votes": 0,
                                  "options": [{"text": "pizza", "votes": 0}, {"text": "soup", "votes": 0}]}

    assert (await bob.request("poll.vote", data={"poll_id": poll_id, "option": 1}))["type"] == "ack"
    for client in (alice, bob):
        results = (await client.recv_type("poll.results"))["data"]
        assert [o["votes"] for o in results["options"]] == [0, 1] and results["total_votes"] == 1

    # one vote per user: voting again moves it
    await bob.request("poll.vote", data={"poll_id": poll_id, "option": 0})
    results = (await alice.recv_type("poll.results"))["data"]
    assert [o["votes"] for o in results["options"]] == [1, 0] and results["total_votes"] == 1


@pytest.mark.parametrize("switchboard_overrides", [{"plugins": {"poll": {"max_options": 3}}}])
async def test_bad_requests_get_an_error_and_the_connection_stays(
        switchboard_server: SwitchboardServer) -> None:
    (alice,) = await _room_with(switchboard_server, "alice")
    outsider = await switchboard_server.connect("carol")
    too_many = await alice.request("poll.create", room="lobby",
                                   data={"question": "?", "options": ["a", "b", "c", "d"]})
    assert too_many["data"]["code"] == "INVALID_MESSAGE" and "at most 3" in too_many["data"]["message"]
    one_option = await alice.request("poll.create", room="lobby", data={"question": "?", "options": ["a"]})
    assert one_option["data"]["code"] == "INVALID_MESSAGE" and "data.options" in one_option["data"]["message"]
    no_room = await alice.request("poll.create", data={"question": "?", "options": ["a", "b"]})
    assert no_room["data"]["code"] == "INVALID_MESSAGE"

    poll_id = (await alice.request("poll.create", room="lobby",
                                   data={"question": "?", "options": ["a", "b"]}))["data"]["poll_id"]
    unknown = await alice.request("poll.vote", data={"poll_id": "nope", "option": 0})
    assert unknown["data"]["code"] == "NOT_FOUND"
    out_of_range = await alice.request("poll.vote", data={"poll_id": poll_id, "option": 2})
    assert out_of_range["data"]["code"] == "INVALID_MESSAGE"
    not_member = await outsider.request("poll.vote", data={"poll_id": poll_id, "option": 0})
    assert not_member["data"]["code"] == "NOT_IN_ROOM"
    assert (await alice.request("ping"))["type"] == "pong"


@pytest.mark.parametrize("section, key", [({"max_options": 1}, "plugins.poll.max_options"),
                                          ({"max_optoins": 5}, "plugins.poll.max_optoins")])
def test_invalid_config_section_fails_startup(section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_app(build_config({"plugins": {"poll": section}}, plugins=["chat", "poll"]))
    assert any(err.startswith(f"{key}:") for err in info.value.errors), info.value.errors


async def test_protocol_lists_the_poll_types(switchboard_server: SwitchboardServer) -> None:
    resp = await switchboard_server.http.get("/api/protocol")
    types = {(t["type"], t["direction"]): t for t in (await resp.json())["types"]}
    create = types[("poll.create", "client_to_server")]
    assert create["plugin"] == "poll" and set(create["schema"]["required"]) == {"question", "options"}
    results = types[("poll.results", "server_to_client")]
    assert results["plugin"] == "poll" and "total_votes" in results["schema"]["properties"]
