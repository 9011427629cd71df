"""Redis stops while clients are connected, then comes back (a real redis-server, killed and
restarted on its port): nobody is disconnected, what needs no storage keeps working on the
node, what needs Redis is refused with UNAVAILABLE and retry_after and reaches no one,
/readyz says 503 within 5 s, and once Redis answers again each node resubscribes on its own,
once per channel, and /readyz is 200 again."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from tests.conftest import connector
from tests.services import RedisServer

pytest_plugins = ["tests.services"]

MakeServer = Callable[..., Awaitable[TestClient]]


async def _until(check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Seconds until ``check()`` holds, polling (the event is a change inside Redis or the
    server, which nothing here can await); fails after ``within``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def _ready(node: TestClient, status: int) -> bool:
    return (await node.get("/readyz")).status == status


async def test_an_outage_refuses_what_needs_redis_and_recovers(
        make_server: MakeServer, fresh_redis: RedisServer) -> None:
    node = await make_server({
        "backend": {"type": "redis", "redis": {"url": fresh_redis.url}},
        "plugins": {"enabled": ["chat", "typing"]},
    })
    connect = connector(node)
    alice, bob = await connect("alice"), await connect("bob")
    for ws in (alice, bob):
        assert (await ws.request("join", room="lobby"))["type"] == "joined"
    channel = "switchboard:{room:lobby}:ch"
    assert fresh_redis.cli("PUBSUB", "SHARDNUMSUB", channel).split()[-1] == "1"

    with capture_logs() as logs:
        await fresh_redis.akill()  # no goodbye: the connections just break
        assert await _until(lambda: _ready(node, 503), 5.0) < 5.0
        assert (await alice.request("ping"))["type"] == "pong"
        await alice.send("typing", room="lobby", data={"is_typing": True})
        assert (await bob.recv_type("typing"))["data"]["is_typing"] is True  # same node: works
        for _ in range(5):
            refused = await alice.request("message", room="lobby", data={"content": "lost?"})
            assert refused["type"] == "error", refused
            assert refused["data"]["code"] == "UNAVAILABLE" and refused["data"]["retry_after"] > 0
        assert not [f for f in await bob.until_pong() if f["type"] == "message"]  # reached no one
        assert (await alice.request("join", room="other"))["data"]["code"] == "UNAVAILABLE"
        assert not alice.ws.closed and not bob.ws.closed
    warnings = [e for e in logs if e["log_level"] in ("warning", "error", "critical")]
    assert len(warnings) <= 3, warnings  # logged at most every few seconds, not per frame

    await fresh_redis.astart()
    assert await _until(lambda: _ready(node, 200), 5.0) < 5.0

    async def resubscribed() -> bool:
        return fresh_redis.cli("PUBSUB", "SHARDNUMSUB", channel).split()[-1] == "1"

    assert await _until(resubscribed, 5.0) < 5.0
    ack = await alice.request("message", room="lobby", data={"content": "back"})
    assert ack["type"] == "ack"
    assert (await bob.recv_type("message"))["data"]["content"] == "back"


async def test_a_connection_made_during_an_outage_is_told_to_come_back(
        make_server: MakeServer, fresh_redis: RedisServer) -> None:
    node = await make_server({"backend": {"type": "redis", "redis": {"url": fresh_redis.url}}})
    await connector(node)("alice")  # the node works
    await fresh_redis.astop()
    late = await connector(node)("bob", expect_connected=False)
    assert await late.closed() == 1013  # try again later: the client's backoff reconnects
