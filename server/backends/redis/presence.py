"""Presence in Redis: per user (one slot) a hash of their open connections (``c:<conn>``), the
status they set (``s``) and whether they were announced online (``a``), changed by Lua scripts
so that of several nodes exactly one sees "first connection", "announce online" and "announce
offline" (the PresenceStore contract); two cluster-wide sorted sets: the online users, in the
order they came online, and ``last_seen`` times, trimmed to ``presence.last_seen_ttl``."""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from ..base import LAST_SEEN_TTL, UserPresence
from .keys import Keys

# KEYS: the user's hash; ARGV: field, info, username ('' for none: kept as 'u', which outlives
# the connections through the grace period) -> connections now
ADD = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'u', ARGV[3]) end
local n = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'c:' then n = n + 1 end
end
return n
"""
# KEYS: the user's hash; ARGV: field -> {connections left, 1 when this call removed the last one,
# 1 when the user is no longer kept (was not announced)}
REMOVE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return {-1, 0, 0} end
local n = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'c:' then n = n + 1 end
end
if n > 0 then return {n, 0, 0} end
if redis.call('HGET', KEYS[1], 'a') == '1' then return {0, 1, 0} end
redis.call('DEL', KEYS[1])
return {0, 1, 1}
"""
# KEYS: the user's hash -> 1 when now announced online
MARK_ONLINE = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'a') == '1' then return 0 end
redis.call('HSET', KEYS[1], 'a', '1')
return 1
"""
# KEYS: the user's hash -> 1 when now offline
MARK_OFFLINE = """
if redis.call('HGET', KEYS[1], 'a') ~= '1' then return 0 end
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'c:' then return 0 end
end
redis.call('DEL', KEYS[1])
return 1
"""
SET_STATUS = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 's', ARGV[1]) end
return 0
"""


class RedisPresenceStore:
    def __init__(self, client: Redis | RedisCluster, keys: Keys, node_id: str) -> None:
        self._r = client
        self._k = keys
        #: this node's connections (conn -> user), for when it dies without a word
        self._mine = keys.node(node_id, "c")
        #: the same, as this node knows them (conn -> user, info), for ``restore``
        self._local: dict[str, tuple[str, dict[str, Any]]] = {}
        self._ttl = LAST_SEEN_TTL
        self._add = client.register_script(ADD)
        self._remove = client.register_script(REMOVE)
        self._online_script = client.register_script(MARK_ONLINE)
        self._offline_script = client.register_script(MARK_OFFLINE)
        self._status = client.register_script(SET_STATUS)

    def set_last_seen_ttl(self, seconds: float) -> None:
        self._ttl = seconds

    def _key(self, user_id: str) -> str:
        return self._k.user(user_id, "p")

    async def add_connection(self, user_id: str, conn_id: str, info: dict[str, Any]) -> int:
        self._local[conn_id] = (user_id, info)
        try:
            await self._r.hset(self._mine, conn_id, user_id)
            count = int(await self._add(keys=[self._key(user_id)],
                                        args=[f"c:{conn_id}", orjson.dumps(info),
                                              str(info.get("username") or "")]))
        except BaseException:
            self._local.pop(conn_id, None)  # not connected: restore() takes out what was written
            raise
        if count == 1:
            await self._r.zadd(self._k.online(), {user_id: time.time()}, nx=True)
        return count

    async def remove_connection(self, user_id: str, conn_id: str) -> int:
        self._local.pop(conn_id, None)
        left, last, dropped = await self._remove(keys=[self._key(user_id)], args=[f"c:{conn_id}"])
        await self._r.hdel(self._mine, conn_id)
        if left == -1:
            return len(await self.connections(user_id))
        if last:
            now = round(time.time(), 3)
            await self._r.zadd(self._k.last_seen(), {user_id: now})
            await self._r.zremrangebyscore(self._k.last_seen(), "-inf", now - self._ttl)
        if dropped:
            await self._r.zrem(self._k.online(), user_id)
        return int(left)

    async def restore(self) -> None:
        """Make Redis hold this node's connections as the node knows them: put back those
        another node reaped, take out those whose removal failed while Redis was away."""
        held = {c.decode(): u.decode() for c, u in (await self._r.hgetall(self._mine)).items()}
        for conn, user in held.items():
            if conn not in self._local:
                await self.remove_connection(user, conn)
                if not await self.connections(user):
                    await self.mark_offline(user)
        for conn in [c for c in self._local if c not in held]:
            known = self._local.get(conn)
            if known is not None:  # not closed meanwhile
                await self.add_connection(known[0], conn, known[1])

    async def connections(self, user_id: str) -> dict[str, dict[str, Any]]:
        fields = await self._r.hgetall(self._key(user_id))
        return {f[2:].decode(): orjson.loads(v) for f, v in fields.items() if f.startswith(b"c:")}

    async def online_users(self, *, limit: int | None = None, offset: int = 0) -> list[str]:
        end = -1 if limit is None else offset + limit - 1
        if limit == 0:
            return []
        return [u.decode() for u in await self._r.zrange(self._k.online(), offset, end)]

    async def online_count(self) -> int:
        return int(await self._r.zcard(self._k.online()))

    async def snapshot(self, user_ids: list[str]) -> list[UserPresence]:
        return [await self._view(user_id) for user_id in user_ids]

    async def _view(self, user_id: str) -> UserPresence:
        fields = await self._r.hgetall(self._key(user_id))
        last_seen = await self.last_seen(user_id)
        if not fields:
            return UserPresence(user_id, False, "offline", 0, last_seen)
        infos = [orjson.loads(v) for f, v in fields.items() if f.startswith(b"c:")]
        extra = orjson.loads(fields[b"s"]) if b"s" in fields else {}
        status = extra.pop("status", "online")
        return UserPresence(user_id, True, status, len(infos), last_seen,
                            username=infos[0].get("username") if infos
                            else (fields[b"u"].decode() if b"u" in fields else None),
                            connected_at=min((i["connected_at"] for i in infos), default=None),
                            extra=extra)

    async def set_status(self, user_id: str, status: dict[str, Any]) -> None:
        await self._status(keys=[self._key(user_id)], args=[orjson.dumps(status)])

    async def get_status(self, user_id: str) -> dict[str, Any] | None:
        raw = await self._r.hget(self._key(user_id), "s")
        return None if raw is None else dict(orjson.loads(raw))

    async def last_seen(self, user_id: str) -> float | None:
        score = await self._r.zscore(self._k.last_seen(), user_id)
        if score is None or score < time.time() - self._ttl:
            return None
        return float(score)

    async def mark_online(self, user_id: str) -> bool:
        return bool(await self._online_script(keys=[self._key(user_id)]))

    async def mark_offline(self, user_id: str) -> float | None:
        if not await self._offline_script(keys=[self._key(user_id)]):
            return None
        await self._r.zrem(self._k.online(), user_id)
        return await self.last_seen(user_id)

    async def sweep(self) -> None:
        await self._r.zremrangebyscore(self._k.last_seen(), "-inf", time.time() - self._ttl)
