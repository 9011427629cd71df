"""Private conversations in Redis (``base.Conversations``).

A pair's messages are a numbered stream like a room's (``streams.RedisHistory`` on
``Keys.conversation``: its own counter, so its own epoch). Each user's list is two keys in the
user's slot: a sorted set (peer -> time of the last message, in ms, one more than the
newest when that is not later, so that the latest is on top) and a hash (peer -> that
message), written together by one Lua function that also drops the entries past ``keep`` and
those older than ``ttl``, so the list never grows beyond its bound however rarely it is read.

On one Redis a private message is one script, one round trip (the broker's keeping script with
both lists' notes after it). On a cluster the pair's keys and each user's are in three slots:
the keeping script, then both notes in one pipeline.
"""

from __future__ import annotations

import time
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from ..base import ConversationEntry, pair_key
from .broker import KEEP_AND_PUBLISH, keep_args
from .keys import Keys
from .streams import RedisHistory

#: note(sorted set, hash, peer, now ms, message, keep, ttl ms): ``peer``'s conversation, whose
#: last message is ``message``, goes to the top of one user's list
NOTE_FUNCTION = """
local function note(zkey, hkey, peer, now, message, keep, ttl)
  local top = redis.call('ZREVRANGE', zkey, 0, 0, 'WITHSCORES')
  if top[2] and tonumber(top[2]) >= now then now = tonumber(top[2]) + 1 end
  redis.call('ZADD', zkey, now, peer)
  redis.call('HSET', hkey, peer, message)
  if ttl > 0 then
    local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', now - ttl)
    if #old > 0 then
      redis.call('ZREM', zkey, unpack(old))
      redis.call('HDEL', hkey, unpack(old))
    end
  end
  local over = redis.call('ZCARD', zkey) - keep
  if over > 0 then
    local old = redis.call('ZRANGE', zkey, 0, over - 1)
    redis.call('ZREMRANGEBYRANK', zkey, 0, over - 1)
    redis.call('HDEL', hkey, unpack(old))
  end
  for _, key in ipairs({zkey, hkey}) do
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
  end
end
"""
#: KEYS: the list's sorted set, its hash. ARGV: peer, now (ms), message, keep, ttl (ms; 0: none)
NOTE = NOTE_FUNCTION + """
note(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
"""
_RETURN = "return {offset, frame}"
#: on one Redis (not a cluster: the keys are in three slots), a private message in one step:
#: the broker's script keeps it in the pair's stream (KEYS[1], KEYS[2]; ARGV[1..9] as there, no
#: channel), then, unless size is 0, the sender's list (KEYS[3], KEYS[4]) and the recipient's
#: (KEYS[5], KEYS[6]; none for a note to oneself) note it. ARGV[10] sender, ARGV[11] recipient,
#: ARGV[12] now ms, ARGV[13] keep, ARGV[14] ttl ms
KEEP_PRIVATE = KEEP_AND_PUBLISH.replace(_RETURN, NOTE_FUNCTION + """
if size > 0 then
  local now, keep, ttl = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
  note(KEYS[3], KEYS[4], ARGV[11], now, frame, keep, ttl)
  if KEYS[5] then note(KEYS[5], KEYS[6], ARGV[10], now, frame, keep, ttl) end
end
""" + _RETURN)
assert KEEP_PRIVATE != KEEP_AND_PUBLISH, "the broker's script no longer ends as expected"


class RedisConversations:
    def __init__(self, client: Redis | RedisCluster, keys: Keys) -> None:
        self.history = RedisHistory(client, keys.conversation)
        self._client = client
        self._keys = keys
        self._keep_private = (None if isinstance(client, RedisCluster)
                              else client.register_script(KEEP_PRIVATE))

    async def append(self, sender: str, to: str, message: dict[str, Any], *, size: int,
                     ttl: float, keep: int) -> str:
        now, ttl_ms = int(time.time() * 1000), int(ttl * 1000)
        lists = [(sender, to)] if sender == to else [(sender, to), (to, sender)]
        if self._keep_private is not None:  # one Redis: one round trip
            pair = pair_key(sender, to)
            keys = [self._keys.conversation(pair, "h"), self._keys.conversation(pair, "m")]
            for user, _ in lists:
                keys += [self._keys.user(user, "cz"), self._keys.user(user, "cl")]
            offset, _ = await self._keep_private(keys=keys, args=[
                *keep_args(message, size=size, ttl=ttl), sender, to, now, keep, ttl_ms])
            message["offset"] = offset.decode()
            return str(message["offset"])
        offset = await self.history.append(pair_key(sender, to), message, size=size, ttl=ttl)
        if size:  # a cluster: both lists in one more round trip (EVAL: its pipeline loads no
            data = orjson.dumps(message)  # scripts)
            pipe = self._client.pipeline(transaction=False)
            for user, peer in lists:
                pipe.eval(NOTE, 2, self._keys.user(user, "cz"), self._keys.user(user, "cl"),
                          peer, now, data, keep, ttl_ms)
            await pipe.execute()
        return offset

    async def recent(self, user_id: str, *, limit: int, ttl: float) -> list[ConversationEntry]:
        if limit <= 0:
            return []
        floor = f"({int((time.time() - ttl) * 1000)}" if ttl else "-inf"
        found = cast(list[tuple[bytes, float]], await self._client.zrevrangebyscore(
            self._keys.user(user_id, "cz"), "+inf", floor, start=0, num=limit, withscores=True))
        if not found:
            return []
        peers = [peer for peer, _ in found]
        messages = cast(list[bytes | None],
                        await self._client.hmget(self._keys.user(user_id, "cl"), peers))
        return [ConversationEntry(peer.decode(), orjson.loads(raw), score / 1000)
                for (peer, score), raw in zip(found, messages) if raw is not None]
