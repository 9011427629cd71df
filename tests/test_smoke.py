from tests.conftest import Connect


async def test_connect_join_message_ack(connect: Connect) -> None:
    alice = await connect("u1", username="alice")
    assert alice.connected and alice.connected["data"]["user"] == {"id": "u1", "username": "alice"}
    bob = await connect("u2", username="bob")
    joined = await alice.request("join", room="general")
    assert joined["type"] == "joined" and joined["data"]["members_count"] == 1
    await bob.request("join", room="general")
    assert (await alice.recv_type("user_joined"))["data"]["user"]["id"] == "u2"
    ack = await bob.request("message", room="general", data={"content": "hi"})
    assert ack["type"] == "ack" and ack["data"]["offset"]
    got = await alice.recv_type("message")
    assert got["data"] == {"content": "hi"} and got["from"] == {"id": "u2", "username": "bob"}
    assert got["id"] == ack["data"]["id"] and got["offset"] == ack["data"]["offset"]
    pong = await alice.request("ping")
    assert pong["type"] == "pong"
