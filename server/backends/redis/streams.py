"""Room history and the inbox in Redis Streams.

A stream key holds the entries (ids ``0-<seq>``: the numbers are consecutive, so a gap in what
is kept shows); a counter hash beside it, in the same slot, holds the stream's epoch and last
number. Offsets are ``<epoch>:<seq>`` as with the memory backend: a stream whose counter was
lost (flushed, expired, a new Redis) starts a new epoch, and an offset of the old one is
answered with ``recovered: false``. Each entry carries the time it was added; entries older
than the stream's ttl are not returned and are trimmed (``XTRIM MINID``) when read, and an idle
stream expires as a whole (``PEXPIRE``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from ..base import HistoryPage
from .broker import KEEP_AND_PUBLISH, keep_args, new_epoch
from .keys import Keys


def _seq(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[1])


def _parse(offset: str | None) -> tuple[str, int] | None:
    epoch, _, seq = (offset or "").rpartition(":")
    if not epoch or not (seq.isascii() and seq.isdigit()):
        return None
    return epoch, int(seq)


class _Top(NamedTuple):
    epoch: str
    seq: int
    ttl: int  # ms; 0: none
    size: int


class _Streams:
    """Streams named by ``key_of(name, "h")`` with counters at ``key_of(name, "m")``."""

    def __init__(self, client: Redis | RedisCluster, key_of: Callable[[str, str], str]) -> None:
        self._client = client
        self._key = key_of
        self._keep = client.register_script(KEEP_AND_PUBLISH)

    async def add(self, name: str, message: dict[str, Any], *, size: int, ttl: float) -> str:
        offset, _ = await self._keep(keys=[self._key(name, "h"), self._key(name, "m")],
                                     args=keep_args(message, size=size, ttl=ttl))
        message["offset"] = offset.decode()
        return str(message["offset"])

    async def top(self, name: str) -> "_Top":
        """The stream's epoch, last number and what it keeps; a stream never written gets its
        epoch now."""
        meta = self._key(name, "m")
        epoch, seq, ttl, size = await self._client.hmget(meta, "e", "s", "t", "z")
        if epoch is None:
            await self._client.hsetnx(meta, "e", new_epoch())
            epoch, seq, ttl, size = await self._client.hmget(meta, "e", "s", "t", "z")
        return _Top(epoch.decode(), int(seq or 0), int(ttl or 0), int(size or 0))

    async def read(self, name: str, after: int, limit: int, top: "_Top"
                   ) -> list[tuple[int, dict[str, Any]]]:
        """Live entries numbered above ``after``, oldest first, at most ``limit``: the newest
        ``size`` ones not older than the ttl (``MAXLEN ~`` may keep a few more)."""
        after = max(after, top.seq - top.size)
        ttl_ms = top.ttl
        if limit <= 0:
            return []
        key = self._key(name, "h")
        entries = await self._client.xrange(key, min=f"(0-{after}", max="+", count=limit)
        if ttl_ms:
            cutoff = time.time() * 1000 - ttl_ms
            fresh = [e for e in entries if int(e[1][b"t"]) > cutoff]
            if len(fresh) < len(entries):
                stale = entries[len(entries) - len(fresh) - 1][0]
                await self._client.xtrim(key, minid=f"0-{_seq(stale) + 1}", approximate=False)
            entries = fresh
        return [(_seq(entry_id), orjson.loads(fields[b"f"])) for entry_id, fields in entries]


class RedisHistory:
    """Numbered streams named by ``key_of(name, part)``: the rooms' (``Keys.room``) or the
    private conversations' (``Keys.conversation``)."""

    def __init__(self, client: Redis | RedisCluster, key_of: Callable[[str, str], str]) -> None:
        self._streams = _Streams(client, key_of)
        self._client = client
        self._key = key_of

    async def append(self, room: str, message: dict[str, Any], *, size: int, ttl: float) -> str:
        return await self._streams.add(room, message, size=size, ttl=ttl)

    async def since(self, room: str, offset: str | None, *, limit: int) -> HistoryPage:
        info = await self._streams.top(room)
        top, here = info.seq, f"{info.epoch}:{info.seq}"
        if offset is None:
            entries = await self._streams.read(room, max(top - limit, 0), limit, info)
            return HistoryPage([m for _, m in entries], True, here)
        parsed = _parse(offset)
        if parsed is None or parsed[0] != info.epoch or parsed[1] > top:
            entries = await self._streams.read(room, 0, limit, info)
            return HistoryPage([m for _, m in entries], False, here)
        seq = parsed[1]
        entries = await self._streams.read(room, seq, limit, info)
        first = entries[0][0] if entries else top + 1
        return HistoryPage([m for _, m in entries], first <= seq + 1, here)

    async def current(self, room: str) -> str:
        info = await self._streams.top(room)
        return f"{info.epoch}:{info.seq}"

    async def drop(self, room: str) -> None:
        await self._client.delete(self._key(room, "h"))

    def on_expired(self, callback: Callable[[str], None]) -> None:
        """Not reported by this backend yet: an idle stream expires inside Redis."""


class RedisInbox:
    def __init__(self, client: Redis | RedisCluster, keys: Keys) -> None:
        self._streams = _Streams(client, lambda user, part: keys.user(user, "i" + part))
        self._client = client
        self._keys = keys

    async def push(self, user_id: str, message: dict[str, Any], *, size: int, ttl: float) -> str:
        return await self._streams.add(user_id, message, size=size, ttl=ttl)

    async def fetch(self, user_id: str, since: str | None = None, *,
                    limit: int = 100) -> list[dict[str, Any]]:
        info = await self._streams.top(user_id)
        parsed = _parse(since)
        after = parsed[1] if parsed is not None and parsed[0] == info.epoch else 0
        return [m for _, m in await self._streams.read(user_id, after, limit, info)]

    async def ack(self, user_id: str, offset: str) -> None:
        info = await self._streams.top(user_id)
        parsed = _parse(offset)
        if parsed is None or parsed[0] != info.epoch:
            return
        upto = min(parsed[1], info.seq)
        await self._client.xtrim(self._keys.user(user_id, "ih"), minid=f"0-{upto + 1}",
                                approximate=False)
