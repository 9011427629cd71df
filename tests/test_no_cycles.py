"""A closed connection is freed by reference counting, not left to the cyclic garbage collector.

``switchboard serve`` runs the collector rarely (server/collector.py: a young collection every
10,000 allocations, start-up frozen), so whatever a closed connection leaves in a reference
cycle stays until a full collection: a connection's whole graph (its WebSocket, request,
buffers, ~10 KiB) for every client that went away with a reset or without a close frame, which
the churn test saw as RSS growth (tests/resilience/test_shutdown_churn.py). Here the collector
is off while clients leave in each way a client leaves; the server's objects of each
connection must then be gone all the same.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from server.keys import NODE
from server.testing import SwitchboardServer
from tests.resilience.test_shutdown_churn import drop

pytest_plugins = ["server.testing"]


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _gone(server: SwitchboardServer) -> None:
    hub = server.app[NODE].hub
    async with asyncio.timeout(5):
        while hub.connections:
            await asyncio.sleep(0.02)
    for _ in range(5):  # the handlers' last steps after the hub let go
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("how", ["close", "fin", "reset", "server_close"])
async def test_a_closed_connection_leaves_no_cycle(
        switchboard_server: SwitchboardServer, collector_off: None, how: str) -> None:
    hub = switchboard_server.app[NODE].hub
    kept: list[weakref.ref[object]] = []
    clients = []
    for n in range(5):
        client = await switchboard_server.connect(f"leaver-{how}-{n}")
        await client.request("join", room="lobby")
        await client.request("message", room="lobby", data={"content": "bye"})
        conn = hub.user_connections(f"leaver-{how}-{n}")[0]
        kept.append(weakref.ref(conn.ws))  # the WebSocket holds its request, buffers, writer
        del conn
        clients.append(client)
    for client in clients:
        if how == "close":
            await client.close()
        elif how == "server_close":
            resp = await switchboard_server.http.post(
                "/api/disconnect", json={"user_id": client.connected["data"]["user"]["id"]},
                headers=switchboard_server.auth_headers("ops", roles=["admin"]))
            assert resp.status == 200, await resp.text()
        else:
            drop(client.ws, reset=how == "reset")
    await _gone(switchboard_server)
    alive = [ref() for ref in kept if ref() is not None]
    assert not alive, f"{len(alive)} of {len(kept)} objects kept alive by a cycle: {alive[:2]}"
