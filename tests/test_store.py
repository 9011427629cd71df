"""The plugins' generic store (backends/base.py ``Store``), as a contract every backend meets:
memory, Redis and Redis Cluster (tests/backends.py)."""

from __future__ import annotations

import asyncio

import pytest

from server.backends.base import Backend, stream_id_key
from tests.backends import backend  # noqa: F401  (the fixture)

pytest_plugins = ["tests.services"]


async def test_values_are_kept_apart_by_namespace_and_copied(backend: Backend) -> None:
    a, b = backend.store("a"), backend.store("b")
    value = {"n": 1, "tags": ["x"]}
    await a.set("k", value)
    value["tags"].append("changed after set")
    assert await a.get("k") == {"n": 1, "tags": ["x"]}
    assert await b.get("k") is None
    got = await a.get("k")
    got["n"] = 2
    assert (await a.get("k"))["n"] == 1
    assert await a.delete("k") is True
    assert await a.delete("k") is False
    assert await a.get("k") is None


async def test_a_value_expires_after_its_ttl(backend: Backend) -> None:
    store = backend.store("ttl")
    await store.set("short", "v", ttl=0.1)
    await store.set("long", "v")
    assert await store.get("short") == "v"
    await asyncio.sleep(0.25)  # the behaviour under test is the passing of time
    assert await store.get("short") is None
    assert await store.get("long") == "v"


async def test_hashes(backend: Backend) -> None:
    store = backend.store("h")
    await store.hash_set("votes", "alice", 1)
    await store.hash_set("votes", "bob", 0)
    await store.hash_set("votes", "alice", 0)
    assert await store.hash_all("votes") == {"alice": 0, "bob": 0}
    assert await store.hash_get("votes", "bob") == 0
    assert await store.hash_get("votes", "carol") is None
    assert await store.hash_delete("votes", "bob", "carol") == 1
    assert await store.hash_delete("votes", "alice") == 1
    assert await store.hash_all("votes") == {}


async def test_streams_keep_order_the_newest_maxlen_and_drop_by_id(backend: Backend) -> None:
    store = backend.store("s")
    ids = [await store.stream_add("feed", {"n": n}, maxlen=3) for n in range(5)]
    assert ids == sorted(ids, key=stream_id_key) and len(set(ids)) == 5
    entries = await store.stream_read("feed")
    assert [v["n"] for _, v in entries] == [2, 3, 4]
    assert [v["n"] for _, v in await store.stream_read("feed", after=ids[2])] == [3, 4]
    assert [v["n"] for _, v in await store.stream_read("feed", limit=1)] == [2]
    assert await store.stream_delete("feed", [ids[3], "1-0"]) == 1
    assert [v["n"] for _, v in await store.stream_read("feed")] == [2, 4]


async def test_stream_entries_expire_each_after_the_ttl(backend: Backend) -> None:
    store = backend.store("s")
    await store.stream_add("feed", "old", maxlen=10, ttl=0.1)
    assert [v for _, v in await store.stream_read("feed")] == ["old"]
    await asyncio.sleep(0.25)  # the behaviour under test is the passing of time
    assert await store.stream_read("feed") == []
    await store.stream_add("feed", "new", maxlen=10, ttl=60)
    assert [v for _, v in await store.stream_read("feed")] == ["new"]


async def test_a_key_holds_one_kind(backend: Backend) -> None:
    store = backend.store("k")
    await store.set("x", 1)
    with pytest.raises(TypeError):
        await store.hash_set("x", "f", 1)
