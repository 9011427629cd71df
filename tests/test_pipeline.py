"""The inbound pipeline (docs/pipeline.md) through real WebSocket clients against the real app:
frame size, JSON decode, envelope and schema, rate limit, content length, filter, plugin
stages, dispatch, in that order; invalid frames close with 4501."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from server.connection import Connection
from server.pipeline.ratelimit import BucketMap
from server.plugin_api import Envelope, ErrorCode, MessageRejected, Plugin
from tests.conftest import WS, Connect, connector, make_token

MakeServer = Callable[..., Awaitable[TestClient[Any, Any]]]


async def serve(make_server: MakeServer, **overrides: Any) -> Connect:
    return connector(await make_server(overrides))


async def error_for(ws: WS, text: str) -> dict[str, Any]:
    """Send a raw text frame; return the ``data`` of the error frame that answers it."""
    await ws.send_raw(text)
    data: dict[str, Any] = (await ws.recv_type("error"))["data"]
    return data


async def still_open(ws: WS) -> None:
    assert (await ws.request("ping"))["type"] == "pong"


async def room_pair(connect: Connect, room: str = "r") -> tuple[WS, WS]:
    """alice and bob, both in ``room``; alice has seen bob join."""
    alice = await connect("u1", username="alice")
    bob = await connect("u2", username="bob")
    await alice.request("join", room=room)
    await bob.request("join", room=room)
    await alice.recv_type("user_joined")
    return alice, bob


# --- 1. frame size --------------------------------------------------------------------------
async def test_frame_over_max_message_size_closes_1009(make_server: MakeServer) -> None:
    connect = await serve(make_server, server={"max_message_size": 1024})
    ws = await connect()
    await ws.send("ping", data={"pad": "x" * 900})  # under the limit: served
    assert (await ws.recv_type("pong"))["type"] == "pong"
    await ws.send("ping", data={"pad": "x" * 1100})
    assert await ws.closed() == 1009


async def test_frame_over_max_message_size_after_inflating_closes_1009(make_server: MakeServer) -> None:
    client = await make_server({"server": {"max_message_size": 1024, "compression": True}})
    ws = WS(await client.ws_connect("/ws", params={"token": make_token()}, compress=15))
    await ws.recv_type("connected")
    text = json.dumps({"type": "ping", "data": {"pad": "a" * 5000}})  # ~5 KB, deflates to ~40 B
    await ws.send_raw(text)
    assert await ws.closed() == 1009


# --- 2. JSON decode -------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    '{"type": "ping"',                                   # syntax error
    "[" * 100_000,                                       # deep nesting
    '{"type": "ping", "n": ' + "7" * 5000 + "}",         # 5000-digit integer
    '{"type": "ping", "n": NaN}',
    '{"type": "ping", "n": -Infinity}',
    '{"type": "ping", "n": 1e999}',                      # out of the double range
    '{"type": "ping", "n": 18446744073709551616}',       # 2**64: orjson would round it to a float
    '{"type": "ping", "n": -9223372036854775809}',       # below int64
    '{"type": "ping", "s": "\\ud800"}',                  # lone surrogate
    '[{"type": "ping"}]',                                # a valid array
    '"ping"',                                            # a valid string
    "42",
    "null",
    "",
], ids=["syntax", "deep", "5000-digits", "nan", "infinity", "1e999", "2**64", "below-int64",
        "lone-surrogate", "array", "string", "number", "null", "empty"])
async def test_invalid_json(make_server: MakeServer, text: str) -> None:
    connect = await serve(make_server, server={"max_message_size": 200_000})
    ws = await connect()
    error = await error_for(ws, text)
    assert error["code"] == "INVALID_JSON", error
    await still_open(ws)


async def test_integers_within_64_bits_pass_exactly(make_server: MakeServer) -> None:
    alice, bob = await room_pair(await serve(make_server))
    data = {"content": "n", "big": 2**64 - 1, "small": -(2**63), "snowflake": "-12345678901234567890"}
    ack = await bob.request("message", room="r", data=data)
    assert ack["type"] == "ack", ack
    assert (await alice.recv_type("message"))["data"] == data


# --- 3. envelope and schema -----------------------------------------------------------------
@pytest.mark.parametrize("frame, detail", [
    ({"data": {}}, "'type' is required"),
    ({"type": 5}, "'type' must be a non-empty string, got a number"),
    ({"type": ""}, "'type' must be a non-empty string, got an empty string"),
    ({"type": "ping", "data": [1]}, "'data' must be an object, got an array"),
    ({"type": "join", "room": 7}, "'room' must be a non-empty string, got a number"),
    ({"type": "message", "room": "r", "data": {"text": "hi"}}, "data.content: is required"),
    ({"type": "message", "room": "r", "data": {"content": 3}}, "data.content"),
], ids=["missing-type", "number-type", "empty-type", "data-array", "room-number", "no-content",
        "content-number"])
async def test_invalid_message_names_the_field_and_replies_to_the_frame(
        connect: Connect, frame: dict[str, Any], detail: str) -> None:
    ws = await connect()
    error = await error_for(ws, json.dumps({**frame, "id": "f1"}))
    assert error["code"] == "INVALID_MESSAGE"
    assert detail in error["message"]
    await ws.send_raw(json.dumps({**frame, "id": "f2"}))
    assert (await ws.recv_type("error"))["reply_to"] == "f2"


async def test_non_string_id_is_invalid_message(connect: Connect) -> None:
    ws = await connect()
    error = await error_for(ws, json.dumps({"type": "ping", "id": 7}))
    assert error == {"code": "INVALID_MESSAGE", "message": "'id' must be a string, got a number"}


async def test_unknown_message_type(connect: Connect) -> None:
    ws = await connect()
    reply = await ws.request("poll.vote")
    assert reply["type"] == "error" and reply["data"]["code"] == "UNKNOWN_MESSAGE_TYPE"
    assert "poll.vote" in reply["data"]["message"]


async def test_binary_frame_is_unsupported(connect: Connect) -> None:
    ws = await connect()
    await ws.ws.send_bytes(b'{"type": "ping"}')
    assert (await ws.recv_type("error"))["data"]["code"] == "UNSUPPORTED_FRAME"
    await still_open(ws)


# --- 4. rate limit --------------------------------------------------------------------------
async def test_rate_limited_retry_after_is_the_time_until_a_token(make_server: MakeServer) -> None:
    connect = await serve(make_server, rate_limit={"messages_per_minute": 60, "burst": 1})
    ws = await connect()
    started = time.monotonic()
    assert (await ws.request("ping"))["type"] == "pong"
    await asyncio.sleep(0.3)  # a third of the next token refills meanwhile
    refused = await ws.request("ping")
    elapsed = time.monotonic() - started
    assert refused["data"]["code"] == "RATE_LIMITED"
    retry_after = refused["data"]["retry_after"]
    # one token a second; the server saw the two frames at least 0.3 s and at most `elapsed` apart
    assert 1.0 - elapsed - 0.002 <= retry_after <= 0.701
    await asyncio.sleep(retry_after)  # exactly as told, not a millisecond more
    assert (await ws.request("ping"))["type"] == "pong"


async def test_per_type_override_has_its_own_bucket(make_server: MakeServer) -> None:
    connect = await serve(make_server, rate_limit={
        "messages_per_minute": 1, "burst": 3,
        "per_type": {"ping": {"messages_per_minute": 1, "burst": 2}}})
    ws = await connect()
    for _ in range(2):
        assert (await ws.request("ping"))["type"] == "pong"
    refused = await ws.request("ping")
    assert refused["data"]["code"] == "RATE_LIMITED" and refused["data"]["retry_after"] > 50
    # the general bucket is untouched: all three of its tokens are there
    assert (await ws.request("join", room="r"))["type"] == "joined"
    for _ in range(2):
        assert (await ws.request("message", room="r", data={"content": "hi"}))["type"] == "ack"
    refused = await ws.request("message", room="r", data={"content": "hi"})
    assert refused["data"]["code"] == "RATE_LIMITED"


async def test_user_bucket_is_shared_by_the_users_connections(make_server: MakeServer) -> None:
    connect = await serve(make_server, rate_limit={
        "messages_per_minute": 600, "burst": 100, "user_messages_per_minute": 1, "user_burst": 3})
    first, second = await connect("u1"), await connect("u1")
    other_user = await connect("u2")
    for ws in (first, first, second):
        assert (await ws.request("ping"))["type"] == "pong"
    for ws in (second, first):
        assert (await ws.request("ping"))["data"]["code"] == "RATE_LIMITED"
    assert (await other_user.request("ping"))["type"] == "pong"


def test_user_buckets_stay_bounded_and_pruning_loses_nothing() -> None:
    users = BucketMap(per_minute=60, burst=2)  # one token a second, two at most
    t0 = time.monotonic()
    hot = users.get("hot", t0)
    hot.take(t0), hot.take(t0)
    for i in range(1023):
        users.get(f"idle{i}", t0).take(t0)
    # 1.5 s later the idle buckets are full again (the same as new ones), "hot" is not: the
    # 1025th user prunes the first but keeps "hot" with its state
    users.get("new", t0 + 1.5)
    assert set(users.buckets) == {"hot", "new"} and users.buckets["hot"] is hot
    assert hot.wait(t0 + 1.5) == 0 and not hot.full(t0 + 1.5)
    # a stream of new users, 20 a second, each active for a second: the map stays small
    largest = 0
    for i in range(20_000):
        now = t0 + 2 + i * 0.05
        users.get(f"u{i}", now).take(now)
        largest = max(largest, len(users.buckets))
    assert largest <= 1024


async def test_dry_run_lets_everything_through_and_logs(make_server: MakeServer) -> None:
    with capture_logs() as logs:
        connect = await serve(make_server, rate_limit={
            "messages_per_minute": 1, "burst": 1, "dry_run": True, "max_violations": 1})
        ws = await connect()
        for _ in range(5):
            assert (await ws.request("ping"))["type"] == "pong"
    exceeded = [e for e in logs if e["event"] == "rate_limit_exceeded"]
    assert len(exceeded) == 4
    assert all(e["dry_run"] and e["retry_after"] > 0 for e in exceeded)
    assert [e["would_close"] for e in exceeded] == [False, True, True, True]


async def test_violations_that_keep_coming_close_4013(make_server: MakeServer) -> None:
    connect = await serve(make_server, rate_limit={
        "messages_per_minute": 1, "burst": 1, "max_violations": 2, "violation_window": 60})
    ws = await connect()
    assert (await ws.request("ping"))["type"] == "pong"
    for _ in range(2):
        assert (await ws.request("ping"))["data"]["code"] == "RATE_LIMITED"
    await ws.send("ping")
    assert await ws.closed() == 4013


# --- 5. content length ----------------------------------------------------------------------
async def test_message_too_long(make_server: MakeServer) -> None:
    connect = await serve(make_server, messages={"max_message_length": 5})
    ws = await connect()
    await ws.request("join", room="r")
    refused = await ws.request("message", room="r", data={"content": "héllo!"})
    assert refused["data"]["code"] == "MESSAGE_TOO_LONG"
    assert "6 characters; the limit is 5" in refused["data"]["message"]
    assert (await ws.request("message", room="r", data={"content": "héllo"}))["type"] == "ack"


# --- 6. filter ------------------------------------------------------------------------------
def filtered(action: str, words: list[str], patterns: list[str] | None = None) -> dict[str, Any]:
    return {"messages": {"filter": {"enabled": True, "action": action, "words": words,
                                    "patterns": patterns or []}}}


async def test_filter_reject_delivers_nothing(make_server: MakeServer) -> None:
    alice, bob = await room_pair(await serve(make_server, **filtered("reject", ["darn"])))
    refused = await bob.request("message", room="r", data={"content": "oh DARN it"})
    assert refused["data"]["code"] == "MESSAGE_FILTERED"
    assert (await bob.request("message", room="r", data={"content": "darned fine"}))["type"] == "ack"
    assert (await alice.recv_type("message"))["data"]["content"] == "darned fine"


async def test_filter_mask_changes_only_the_matches(make_server: MakeServer) -> None:
    alice, bob = await room_pair(await serve(make_server, **filtered("mask", ["darn", "c++", "f*ck"])))
    data = {"content": "Darn: I love C++, f*ck. darned abc++ f*cking", "meta": {"k": [1, "darn"]}}
    ack = await bob.request("message", room="r", data=data)
    assert ack["type"] == "ack"
    got = await alice.recv_type("message")
    assert got["data"] == {"content": "****: I love ***, ****. darned abc++ f*cking",
                           "meta": {"k": [1, "darn"]}}
    assert got["id"] == ack["data"]["id"] and got["from"] == {"id": "u2", "username": "bob"}
    # the sender is told what the others got
    assert ack["data"]["content"] == got["data"]["content"] and ack["data"]["filtered"] is True
    clean = await bob.request("message", room="r", data={"content": "all fine"})
    assert set(clean["data"]) == {"id", "offset"}  # nothing masked: nothing more said


async def test_a_masked_private_message_is_acked_with_what_was_delivered(
        make_server: MakeServer) -> None:
    connect = await serve(make_server, **filtered("mask", ["darn"]))
    alice, bob = await connect("u1", username="alice"), await connect("u2", username="bob")
    ack = await bob.request("message", to="u1", data={"content": "darn you"})
    got = await alice.recv_type("message")
    assert got["data"]["content"] == ack["data"]["content"] == "**** you"
    assert ack["data"]["filtered"] is True


@pytest.mark.parametrize("content, masked", [
    ("мат мать МАТ", "*** мать ***"),                    # Cyrillic, case-insensitive, whole words
    ("वह बकवास है; बकवासी", "वह ***** है; बकवासी"),          # a vowel sign continues the word
    ("cafe\u0301 café cafés", "***** **** cafés"),       # decomposed and composed forms
    ("你是傻瓜吗", "你是**吗"),                            # no spaces in Chinese: no boundary
], ids=["cyrillic", "devanagari", "decomposed", "chinese"])
async def test_filter_words_in_other_scripts(make_server: MakeServer, content: str, masked: str) -> None:
    connect = await serve(make_server, **filtered("mask", ["мат", "बकवास", "café", "傻瓜"]))
    alice, bob = await room_pair(connect)
    await bob.request("message", room="r", data={"content": content})
    assert (await alice.recv_type("message"))["data"]["content"] == masked


async def test_filter_regex_pattern(make_server: MakeServer) -> None:
    connect = await serve(make_server, **filtered("mask", [], [r"\b\d{3}-\d{4}\b", "(?i)spam+"]))
    alice, bob = await room_pair(connect)
    await bob.request("message", room="r", data={"content": "call 555-1234, SPAMMM 5551-2345"})
    assert (await alice.recv_type("message"))["data"]["content"] == "call ********, ****** 5551-2345"


# --- 7. invalid frames ----------------------------------------------------------------------
async def test_too_many_invalid_frames_close_4501_and_nothing_after_is_handled(
        make_server: MakeServer) -> None:
    connect = await serve(make_server, messages={"max_invalid_frames": 3})
    alice, bob = await room_pair(connect)
    for _ in range(2):
        assert (await error_for(bob, "{oops"))["code"] == "INVALID_JSON"
    await bob.send_raw(json.dumps({"type": "nope"}))
    await bob.send("message", room="r", data={"content": "after the close"})
    assert await bob.closed() == 4501
    # bob's user_left comes once his connection is finished, after any message he got through
    assert (await alice.recv())["type"] == "user_left"


async def test_invalid_frames_are_counted_within_a_window(make_server: MakeServer) -> None:
    connect = await serve(make_server, messages={"max_invalid_frames": 2, "invalid_frames_window": 0.5})
    ws = await connect()
    assert (await error_for(ws, "{oops"))["code"] == "INVALID_JSON"
    await asyncio.sleep(0.6)  # the window is a span of time: the first mistake falls out of it
    assert (await error_for(ws, "{oops"))["code"] == "INVALID_JSON"
    await still_open(ws)
    await ws.send_raw("{oops")
    assert await ws.closed() == 4501


# --- order of the stages --------------------------------------------------------------------
async def test_stages_run_in_order(make_server: MakeServer) -> None:
    connect = await serve(make_server, rate_limit={"messages_per_minute": 1, "burst": 2},
                          messages={"max_message_length": 5, **filtered("reject", ["darn"])["messages"]})
    ws = await connect()
    await ws.request("join", room="r")                   # takes 1 of the 2 tokens
    # decode before the envelope: an unknown type in broken JSON is INVALID_JSON
    assert (await error_for(ws, '{"type": "nope", '))["code"] == "INVALID_JSON"
    # length before the filter
    too_long = await ws.request("message", room="r", data={"content": "darn it all"})
    assert too_long["data"]["code"] == "MESSAGE_TOO_LONG"   # took the last token
    # schema before the rate limit: refused without a token taken
    assert (await ws.request("message", room="r", data={}))["data"]["code"] == "INVALID_MESSAGE"
    assert (await ws.request("nope"))["data"]["code"] == "UNKNOWN_MESSAGE_TYPE"
    # the rate limit before the length: over-long and over the limit is RATE_LIMITED
    over = await ws.request("message", room="r", data={"content": "far too long"})
    assert over["data"]["code"] == "RATE_LIMITED"


class AuditStage:
    """Refuses frames with ``data.audit``, quoting the content it saw; fails on ``data.boom``."""

    name = "audit"

    async def process(self, conn: Connection, env: Envelope) -> Envelope | None:
        if env.data.get("boom"):
            raise RuntimeError("the stage has a bug")
        if env.data.get("audit"):
            raise MessageRejected(ErrorCode.FORBIDDEN, f"audit saw {env.data.get('content')!r}")
        return env


class AuditPlugin(Plugin):
    name = "audit"

    def stages(self) -> list[Any]:
        return [AuditStage()]


async def test_plugin_stage_runs_after_the_filter_and_a_failing_one_keeps_the_connection(
        make_server: MakeServer) -> None:
    connect = await serve(make_server, plugins={"enabled": ["chat", "tests.test_pipeline:AuditPlugin"]},
                          **filtered("mask", ["darn"]))
    alice, bob = await room_pair(connect)
    seen = await bob.request("message", room="r", data={"content": "darn", "audit": True})
    assert seen["data"] == {"code": "FORBIDDEN", "message": "audit saw '****'"}
    with capture_logs() as logs:
        failed = await bob.request("message", room="r", data={"content": "x", "boom": True})
    assert failed["data"] == {"code": "INTERNAL_ERROR",
                              "message": "internal error while handling the frame"}
    assert any(e["event"] == "stage_failed" and e["stage"] == "audit" for e in logs)
    assert (await bob.request("message", room="r", data={"content": "ok"}))["type"] == "ack"
    assert (await alice.recv_type("message"))["data"]["content"] == "ok"
