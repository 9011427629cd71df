"""The History and Inbox contracts (server/backends/base.py), run on every backend that
``create_backend`` builds (tests/backends.py): memory, Redis and Redis Cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.backends.base import Backend, pair_key
from tests.backends import backend  # noqa: F401  (the fixture)

pytest_plugins = ["tests.services"]


def msg(n: int | str) -> dict[str, Any]:
    return {"type": "message", "id": f"m{n}", "data": {"content": str(n)}}


def contents(messages: list[dict[str, Any]]) -> list[str]:
    return [m["data"]["content"] for m in messages]


async def fill(backend: Backend, room: str, count: int, *, size: int = 100, ttl: float = 0) -> list[str]:
    return [await backend.history.append(room, msg(i), size=size, ttl=ttl) for i in range(count)]


async def test_history_offsets_and_pages(backend: Backend) -> None:
    history = backend.history
    start = await history.current("r")
    offsets = await fill(backend, "r", 6)
    assert len(set(offsets)) == 6 and await history.current("r") == offsets[-1] != start
    latest = await history.since("r", None, limit=2)
    assert contents(latest.messages) == ["4", "5"] and latest.recovered and latest.offset == offsets[-1]
    page = await history.since("r", start, limit=4)  # a page cut by limit is still recovered
    assert contents(page.messages) == ["0", "1", "2", "3"] and page.recovered
    assert [m["offset"] for m in page.messages] == offsets[:4]
    rest = await history.since("r", offsets[3], limit=4)
    assert contents(rest.messages) == ["4", "5"] and rest.recovered
    top = await history.since("r", offsets[-1], limit=4)
    assert top.messages == [] and top.recovered
    assert (await history.since("other", None, limit=5)).messages == []


async def test_history_gaps_and_unknown_offsets_are_not_recovered(backend: Backend) -> None:
    history = backend.history
    start = await history.current("r")
    offsets = await fill(backend, "r", 5, size=2)
    gap = await history.since("r", start, limit=10)
    assert contents(gap.messages) == ["3", "4"] and not gap.recovered
    assert (await history.since("r", offsets[2], limit=10)).recovered  # 3 and 4 are kept
    epoch = offsets[0].rpartition(":")[0]
    for unknown in ("elsewhere:1", "garbage", f"{epoch}:99", f"{epoch}:-1", f"{epoch}: 1", ":3"):
        page = await history.since("r", unknown, limit=10)
        assert contents(page.messages) == ["3", "4"] and not page.recovered, unknown


async def test_history_size_zero_keeps_nothing_but_numbers_on(backend: Backend) -> None:
    history = backend.history
    start = await history.current("r")
    offsets = await fill(backend, "r", 3, size=0)
    assert await history.current("r") == offsets[-1]
    assert not (await history.since("r", start, limit=10)).recovered
    assert (await history.since("r", offsets[-1], limit=10)).recovered


async def test_history_expires_when_read(backend: Backend) -> None:
    history = backend.history
    start = await history.current("r")
    await fill(backend, "r", 2, ttl=0.05)
    await asyncio.sleep(0.15)  # the behaviour under test is the passing of time
    assert (await history.since("r", None, limit=10)).messages == []
    assert not (await history.since("r", start, limit=10)).recovered


async def test_dropping_history_does_not_restart_the_numbering(backend: Backend) -> None:
    history = backend.history
    old = await fill(backend, "r", 3)
    await history.drop("r")
    new = await history.append("r", msg("new"), size=100, ttl=0)
    assert new not in old
    page = await history.since("r", old[0], limit=10)  # 1 and 2 went with the drop
    assert contents(page.messages) == ["new"] and not page.recovered
    assert (await history.since("r", old[-1], limit=10)).recovered


async def test_inbox_fetch_and_ack(backend: Backend) -> None:
    inbox = backend.inbox
    offsets = [await inbox.push("u", msg(i), size=10, ttl=60) for i in range(4)]
    await inbox.push("someone-else", msg("x"), size=10, ttl=60)
    assert contents(await inbox.fetch("u")) == ["0", "1", "2", "3"]
    assert contents(await inbox.fetch("u", offsets[1], limit=1)) == ["2"]
    assert contents(await inbox.fetch("u", "another-epoch:3")) == ["0", "1", "2", "3"]
    await inbox.ack("u", offsets[1])
    await inbox.ack("u", offsets[1])  # again, and an older one: nothing changes
    await inbox.ack("u", offsets[0])
    await inbox.ack("u", "another-epoch:9")
    await inbox.ack("u", "garbage")
    assert contents(await inbox.fetch("u")) == ["2", "3"]
    assert contents(await inbox.fetch("someone-else")) == ["x"]
    assert await inbox.fetch("nobody") == []


async def test_an_inbox_ack_past_the_newest_covers_only_what_is_there(backend: Backend) -> None:
    inbox = backend.inbox
    first = await inbox.push("u", msg(1), size=10, ttl=60)
    await inbox.ack("u", f"{first.rpartition(':')[0]}:999")
    assert await inbox.fetch("u") == []
    await inbox.push("u", msg(2), size=10, ttl=60)
    assert contents(await inbox.fetch("u")) == ["2"]


async def test_the_inbox_is_bounded(backend: Backend) -> None:
    inbox = backend.inbox
    for i in range(5):
        await inbox.push("u", msg(i), size=3, ttl=60)
    assert contents(await inbox.fetch("u")) == ["2", "3", "4"]
    await inbox.push("v", msg("brief"), size=3, ttl=0.05)
    await asyncio.sleep(0.15)  # the behaviour under test is the passing of time
    assert await inbox.fetch("v") == []


# --- private conversations ------------------------------------------------------------------
def test_a_pair_has_one_key_whatever_its_ids_hold() -> None:
    assert pair_key("ann", "bob") == pair_key("bob", "ann")
    odd = ["a:b", "a", "b:c", "a:b:c", "}{", "{x}", "ü", "a b"]
    keys = {pair_key(x, y) for x in odd for y in odd}
    assert len(keys) == len({frozenset((x, y)) for x in odd for y in odd})


async def test_a_conversation_is_numbered_apart_from_rooms_and_the_inbox(backend: Backend) -> None:
    history = backend.conversations.history
    pair = pair_key("ann", "{bob}")
    offsets = [await history.append(pair, msg(i), size=3, ttl=0) for i in range(5)]
    await backend.inbox.push("{bob}", msg("i"), size=10, ttl=60)
    await backend.history.append(pair, msg("room"), size=10, ttl=0)  # a room of that name
    page = await history.since(pair, None, limit=10)
    assert contents(page.messages) == ["2", "3", "4"] and page.offset == offsets[-1]
    assert contents((await history.since(pair, offsets[2], limit=10)).messages) == ["3", "4"]
    assert not (await history.since(pair, offsets[0], limit=10)).recovered  # pushed out
    # the three numberings are three epochs: no offset of one is a position in another
    epochs = {offsets[0].rpartition(":")[0],
              (await backend.inbox.fetch("{bob}"))[0]["offset"].rpartition(":")[0],
              (await backend.history.current(pair)).rpartition(":")[0]}
    assert len(epochs) == 3


async def test_each_user_lists_their_conversations_latest_first(backend: Backend) -> None:
    conv = backend.conversations
    for sender, to, n in [("ann", "bob", 1), ("cat", "ann", 2), ("bob", "ann", 3), ("ann", "dan", 4)]:
        await conv.append(sender, to, msg(n), size=10, ttl=60, keep=10)
    listed = await conv.recent("ann", limit=10, ttl=60)
    assert [(e.peer, e.last_message["data"]["content"]) for e in listed] == \
        [("dan", "4"), ("bob", "3"), ("cat", "2")]
    assert listed[0].last_message["offset"] == await conv.history.current(pair_key("dan", "ann"))
    assert listed[0].updated >= listed[1].updated >= listed[2].updated
    assert [e.peer for e in await conv.recent("ann", limit=2, ttl=60)] == ["dan", "bob"]
    assert [e.peer for e in await conv.recent("bob", limit=10, ttl=60)] == ["ann"]
    assert await conv.recent("nobody", limit=10, ttl=60) == []
    await conv.append("eve", "eve", msg("note"), size=10, ttl=60, keep=10)  # to oneself
    assert [e.peer for e in await conv.recent("eve", limit=10, ttl=60)] == ["eve"]
    offset = await conv.append("zed", "amy", msg("unkept"), size=0, ttl=60, keep=10)
    assert offset and await conv.recent("zed", limit=10, ttl=60) == []  # size 0: nothing kept
    assert (await conv.history.since(pair_key("zed", "amy"), None, limit=10)).messages == []


async def test_a_users_list_is_bounded_by_keep_and_ttl(backend: Backend) -> None:
    conv = backend.conversations
    for n in range(5):
        await conv.append("ann", f"p{n}", msg(n), size=10, ttl=60, keep=3)
    assert [e.peer for e in await conv.recent("ann", limit=10, ttl=60)] == ["p4", "p3", "p2"]
    await conv.append("eve", "old", msg("old"), size=10, ttl=0.05, keep=3)
    await asyncio.sleep(0.15)  # the behaviour under test is the passing of time
    assert await conv.recent("eve", limit=10, ttl=0.05) == []
    await conv.append("eve", "new", msg("new"), size=10, ttl=0.05, keep=3)  # the old goes for good
    assert [e.peer for e in await conv.recent("eve", limit=10, ttl=0)] == ["new"]
