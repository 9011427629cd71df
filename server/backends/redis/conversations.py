"""Private conversations in Redis (``base.Conversations``).

A pair's messages are a numbered stream like a room's (``streams.RedisHistory`` on
``Keys.conversation``: its own counter, so its own epoch). Each user's list is two keys in the
user's slot: a sorted set (peer -> time of the last message, in ms, one more than the
newest when that is not later, so that the latest is on top) and a hash (peer -> that
message), written together by one script that also drops the entries past ``keep`` and those
older than ``ttl``, so the list never grows beyond its bound however rarely it is read.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from ..base import ConversationEntry
from .keys import Keys
from .streams import RedisHistory

#: KEYS: the list's sorted set, its hash. ARGV: peer, now (ms), message, keep, ttl (ms; 0: none)
NOTE = """
local now = tonumber(ARGV[2])
local top = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if top[2] and tonumber(top[2]) >= now then now = tonumber(top[2]) + 1 end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
  if #old > 0 then
    redis.call('ZREM', KEYS[1], unpack(old))
    redis.call('HDEL', KEYS[2], unpack(old))
  end
end
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[1], 0, over - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
  redis.call('HDEL', KEYS[2], unpack(old))
end
for i = 1, 2 do
  if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) else redis.call('PERSIST', KEYS[i]) end
end
"""


class RedisConversations:
    def __init__(self, client: Redis | RedisCluster, keys: Keys) -> None:
        self.history = RedisHistory(client, keys.conversation)
        self._client = client
        self._keys = keys
        self._note = client.register_script(NOTE)

    async def note(self, user_id: str, peer: str, message: dict[str, Any], *, keep: int,
                   ttl: float) -> None:
        keys = [self._keys.user(user_id, "cz"), self._keys.user(user_id, "cl")]
        await self._note(keys=keys, args=[peer, int(time.time() * 1000), orjson.dumps(message),
                                          keep, int(ttl * 1000)])

    async def recent(self, user_id: str, *, limit: int, ttl: float) -> list[ConversationEntry]:
        if limit <= 0:
            return []
        floor = f"({int((time.time() - ttl) * 1000)}" if ttl else "-inf"
        found = await self._client.zrevrangebyscore(self._keys.user(user_id, "cz"), "+inf",
                                                    floor, start=0, num=limit, withscores=True)
        if not found:
            return []
        peers = [peer for peer, _ in found]
        messages = await self._client.hmget(self._keys.user(user_id, "cl"), peers)
        return [ConversationEntry(peer.decode(), orjson.loads(raw), score / 1000)
                for (peer, score), raw in zip(found, messages) if raw is not None]
