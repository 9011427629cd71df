"""``GET /metrics``: the values move as a scripted session connects, sends, gets refused and
disconnects; exposure follows ``metrics.enabled`` and ``metrics.admin_only``; label values stay
bounded whatever clients send."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import connector, make_token

KEY = "metrics-key-0123456789abcdef"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: TestClient, headers: dict[str, str] | None = None) -> Samples:
    async with client.get("/metrics", headers=headers or {}) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_a_scripted_session_moves_the_metrics(make_server: Any) -> None:
    client = await make_server({"rate_limit": {"burst": 1, "messages_per_minute": 1,
                                               "max_violations": 100}})
    connect = connector(client)
    before = await scrape(client)
    assert value(before, "switchboard_connections") == 0
    alice = await connect("alice", query={"rooms": "lobby"})
    bob = await connect("bob", query={"rooms": "lobby"})
    opened = await scrape(client)
    assert value(opened, "switchboard_connections") == 2
    assert value(opened, "switchboard_connected_users") == 2
    assert delta(before, opened, "switchboard_connections_opened_total") == 2
    assert delta(before, opened, "switchboard_messages_out_total", type="connected") == 2

    assert (await alice.request("message", room="lobby", data={"content": "hi"}))["type"] == "ack"
    await bob.recv_type("message")
    await alice.send_raw("not json")
    await alice.recv_type("error")
    await alice.send("no.such.type")
    await alice.recv_type("error")
    assert (await alice.request("ping"))["data"]["code"] == "RATE_LIMITED"  # after the one-frame burst
    sent = await scrape(client)
    assert delta(opened, sent, "switchboard_messages_in_total", type="message") == 1
    assert delta(opened, sent, "switchboard_messages_in_total", type="invalid") == 1
    assert delta(opened, sent, "switchboard_messages_in_total", type="unknown") == 1
    assert delta(opened, sent, "switchboard_messages_in_total", type="ping") == 1
    assert delta(opened, sent, "switchboard_messages_out_total", type="message") == 1
    assert delta(opened, sent, "switchboard_messages_out_total", type="ack") == 1
    assert delta(opened, sent, "switchboard_messages_out_total", type="error") == 3
    assert delta(opened, sent, "switchboard_errors_total", code="INVALID_JSON") == 1
    assert delta(opened, sent, "switchboard_errors_total", code="UNKNOWN_MESSAGE_TYPE") == 1
    assert delta(opened, sent, "switchboard_errors_total", code="RATE_LIMITED") == 1
    assert delta(opened, sent, "switchboard_rate_limited_frames_total") == 1
    assert delta(opened, sent, "switchboard_handler_duration_seconds_count", type="message") == 1
    assert delta(opened, sent, "switchboard_fanout_duration_seconds_count") == 1  # the room message
    # every frame queued so far has been read by its client: nothing waits in a queue
    assert value(sent, "switchboard_outbound_queue_frames") == 0
    assert value(sent, "switchboard_outbound_queue_bytes") == 0

    await alice.close()
    await bob.close()
    async with client.get("/healthz") as resp:
        assert resp.status == 200
    closed = await _wait_closed(client, 2)
    assert value(closed, "switchboard_connections") == 0
    assert delta(before, closed, "switchboard_connections_closed_total", code="1000") == 2
    assert delta(opened, closed, "switchboard_http_requests_total", method="GET", route="/healthz",
                 status="200") == 1


async def _wait_closed(client: TestClient, count: int) -> Samples:
    """The scrape once ``count`` connections have been counted closed (the server's handler
    ends just after the client's close returns), within a bounded number of scrapes."""
    for _ in range(200):
        samples = await scrape(client)
        if value(samples, "switchboard_connections_closed_total", code="1000") >= count:
            return samples
    raise AssertionError("the closes were never counted")


async def test_a_slow_consumer_close_is_counted(make_server: Any) -> None:
    client = await make_server({"server": {"write_buffer_size": 64 * 1024, "max_queued_messages": 100},
                                "rate_limit": {"enabled": False}})
    connect = connector(client)
    sender, slow = await connect("sender"), await connect("slow")
    for ws in (sender, slow):
        await ws.request("join", room="r")
    before = await scrape(client)
    for _ in range(3000):  # ~12 MB that "slow" never reads: past the socket buffers and the queue
        await sender.send("message", room="r", data={"content": "x" * 4000})
    assert await slow.closed(timeout=20) == 4008
    after = await _wait_for(client, "switchboard_slow_consumer_closes_total", 1)
    assert delta(before, after, "switchboard_connections_closed_total", code="4008") == 1


async def _wait_for(client: TestClient, name: str, at_least: float) -> Samples:
    for _ in range(200):
        samples = await scrape(client)
        if value(samples, name) >= at_least:
            return samples
    raise AssertionError(f"{name} never reached {at_least}")


async def test_labels_stay_bounded_whatever_clients_send(make_server: Any) -> None:
    client = await make_server({"rate_limit": {"enabled": False},
                                "messages": {"max_invalid_frames": 1000}})
    ws = await connector(client)("u")
    for n in range(50):
        await ws.send(f"made.up.{n}")
        await ws.recv_type("error")
    samples = await scrape(client)
    types = {dict(labels)["type"] for name, labels in samples
             if name == "switchboard_messages_in_total"}
    assert not any(t.startswith("made.up") for t in types)
    assert value(samples, "switchboard_messages_in_total", type="unknown") == 50


async def test_exposure_follows_the_config(make_server: Any) -> None:
    off = await make_server({"metrics": {"enabled": False}})
    async with off.get("/metrics") as resp:
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "NOT_FOUND"
    guarded = await make_server({"metrics": {"admin_only": True}, "api": {"keys": [KEY]}})
    for headers, status in (({}, 401), ({"Authorization": f"Bearer {make_token('u')}"}, 403),
                            ({"Authorization": f"Bearer {make_token('a', roles=['admin'])}"}, 200),
                            ({"X-API-Key": KEY}, 200)):
        async with guarded.get("/metrics", headers=headers) as resp:
            assert resp.status == status
    samples = await scrape(guarded, {"X-API-Key": KEY})
    assert value(samples, "process_resident_memory_bytes") > 0
    assert any(name == "switchboard_info" for name, _ in samples)
