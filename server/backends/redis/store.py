"""The plugins' generic store in Redis: a value is a string key, a hash a hash, a stream a
stream (ids ``<ms>-<seq>`` from Redis: time-ordered, so an entry's ttl is a ``MINID`` trim).
Values are JSON. Each key is its own hash tag, so a plugin's keys spread over a cluster's
slots and no operation needs two."""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from .keys import Keys


def _kind_error(key: str, exc: ResponseError) -> Exception:
    if "WRONGTYPE" in str(exc):
        return TypeError(f"store key {key!r} holds another kind of value")
    return exc


class RedisStore:
    def __init__(self, client: Redis | RedisCluster, keys: Keys, namespace: str) -> None:
        self._r = client
        self._k = keys
        self._ns = namespace

    def _key(self, key: str) -> str:
        return self._k.stored(self._ns, key)

    async def _expire(self, name: str, ttl: float) -> None:
        """A hash or stream lasts ``ttl`` seconds from this write (0: for ever)."""
        if ttl:
            await self._r.pexpire(name, int(ttl * 1000))
        else:
            await self._r.persist(name)

    # --- values ---------------------------------------------------------------------------
    async def get(self, key: str) -> Any | None:
        try:
            raw = await self._r.get(self._key(key))
        except ResponseError as exc:
            raise _kind_error(key, exc) from None
        return None if raw is None else orjson.loads(raw)

    async def set(self, key: str, value: Any, *, ttl: float = 0.0) -> None:
        name = self._key(key)
        kind = await self._r.type(name)
        if kind not in (b"none", b"string"):
            raise TypeError(f"store key {key!r} holds another kind of value")
        await self._r.set(name, orjson.dumps(value), px=int(ttl * 1000) if ttl else None)

    async def delete(self, key: str) -> bool:
        return bool(await self._r.delete(self._key(key)))

    # --- hashes ---------------------------------------------------------------------------
    async def hash_get(self, key: str, field: str) -> Any | None:
        try:
            raw = await self._r.hget(self._key(key), field)
        except ResponseError as exc:
            raise _kind_error(key, exc) from None
        return None if raw is None else orjson.loads(raw)

    async def hash_set(self, key: str, field: str, value: Any, *, ttl: float = 0.0) -> None:
        name = self._key(key)
        try:
            await self._r.hset(name, field, orjson.dumps(value))
        except ResponseError as exc:
            raise _kind_error(key, exc) from None
        await self._expire(name, ttl)

    async def hash_all(self, key: str) -> dict[str, Any]:
        try:
            fields = await self._r.hgetall(self._key(key))
        except ResponseError as exc:
            raise _kind_error(key, exc) from None
        return {f.decode(): orjson.loads(v) for f, v in fields.items()}

    async def hash_delete(self, key: str, *fields: str) -> int:
        return int(await self._r.hdel(self._key(key), *fields)) if fields else 0

    # --- streams --------------------------------------------------------------------------
    async def stream_add(self, key: str, value: Any, *, maxlen: int, ttl: float = 0.0) -> str:
        name = self._key(key)
        if maxlen <= 0:
            await self._r.delete(name)
            return "0-0"
        try:
            entry_id = await self._r.xadd(name, {"v": orjson.dumps(value), "t": ttl},
                                          maxlen=maxlen, approximate=False)
        except ResponseError as exc:
            raise _kind_error(key, exc) from None
        await self._expire(name, ttl)
        return str(entry_id.decode())

    async def stream_read(self, key: str, *, after: str | None = None,
                          limit: int = 100) -> list[tuple[str, Any]]:
        name = self._key(key)
        now_ms = time.time() * 1000
        out: list[tuple[str, Any]] = []
        expired: list[bytes] = []
        start = f"({after}" if after else "-"
        while len(out) < limit:
            want = limit - len(out) + 16  # a few more: some may have expired
            try:
                entries = await self._r.xrange(name, min=start, max="+", count=want)
            except ResponseError as exc:
                raise _kind_error(key, exc) from None
            for entry_id, fields in entries:
                ttl = float(fields[b"t"])
                if ttl and int(entry_id.split(b"-")[0]) + ttl * 1000 <= now_ms:
                    expired.append(entry_id)  # entries expire each after its own ttl
                elif len(out) < limit:
                    out.append((entry_id.decode(), orjson.loads(fields[b"v"])))
            if len(entries) < want:
                break
            start = f"({entries[-1][0].decode()}"
        if expired:
            await self._r.xdel(name, *expired)
        return out

    async def stream_delete(self, key: str, ids: list[str]) -> int:
        return int(await self._r.xdel(self._key(key), *ids)) if ids else 0
