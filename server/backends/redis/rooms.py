"""Rooms and their members in Redis: per room (one slot) an info hash, ``conn -> user`` and
``user -> connection count`` hashes, changed by Lua scripts so that a member count and "the
user's last connection left" are exact under concurrent nodes; per user (their own slot) the
set of their rooms; one set of every room's id for listing and counting."""

from __future__ import annotations

import time
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from ..base import RoomInfo
from .keys import Keys

# KEYS: info, conns, users; ARGV: name, description, created_at, max_members ('' none), persistent
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'description', ARGV[2], 'created_at', ARGV[3],
           'max_members', ARGV[4], 'persistent', ARGV[5])
return 1
"""
# KEYS: conns, users; ARGV: conn, user
ADD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end
return redis.call('HLEN', KEYS[2])
"""
# KEYS: info, conns, users, history counter; ARGV: conn, user
# -> {members left, 1 when the user has no connection left in the room, 1 when the room went}
REMOVE = """
local gone = 0
if redis.call('HDEL', KEYS[2], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[3], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[3], ARGV[2])
    gone = 1
  end
end
local count = redis.call('HLEN', KEYS[3])
local deleted = 0
if count == 0 and redis.call('HGET', KEYS[1], 'persistent') == '0' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  deleted = 1
end
return {count, gone, deleted}
"""


class RedisRoomStore:
    def __init__(self, client: Redis | RedisCluster, keys: Keys, node_id: str) -> None:
        self._r = client
        self._k = keys
        #: this node's memberships (``room\nuser\nconn``), for when it dies without a word
        self._mine = keys.node(node_id, "m")
        #: the same, as this node knows them, to put back after a lapse (``restore``)
        self._local: set[str] = set()
        self._create = client.register_script(CREATE)
        self._add = client.register_script(ADD)
        self._remove = client.register_script(REMOVE)

    def _keys(self, room: str) -> list[str]:
        return [self._k.room(room, "i"), self._k.room(room, "c"), self._k.room(room, "u")]

    @staticmethod
    def _info(room: str, fields: dict[bytes, bytes], members: int) -> RoomInfo:
        cap = fields.get(b"max_members", b"")
        return RoomInfo(room, fields[b"name"].decode(), fields[b"description"].decode(),
                        float(fields[b"created_at"]), int(cap) if cap else None, members,
                        persistent=fields.get(b"persistent") != b"0")

    async def get(self, room: str) -> RoomInfo | None:
        fields = await self._r.hgetall(self._k.room(room, "i"))
        if not fields:
            return None
        return self._info(room, fields, await self._r.hlen(self._k.room(room, "u")))

    async def create(self, room: str, *, name: str = "", description: str = "",
                     max_members: int | None = None,
                     persistent: bool = True) -> tuple[RoomInfo, bool]:
        created = await self._create(keys=self._keys(room), args=[
            name or room, description, time.time(), "" if max_members is None else max_members,
            1 if persistent else 0])
        await self._r.sadd(self._k.rooms(), room)
        info = await self.get(room)
        assert info is not None
        return info, bool(created)

    async def delete(self, room: str) -> bool:
        users = await self._r.hkeys(self._k.room(room, "u"))
        existed = await self._r.exists(self._k.room(room, "i"))
        await self._r.delete(*self._keys(room))  # one slot: the keys share the room's hash tag
        await self._r.srem(self._k.rooms(), room)
        for user in users:
            await self._r.srem(self._k.user(user.decode(), "r"), room)
        return bool(existed)

    async def list(self) -> list[RoomInfo]:
        found = []
        for room in sorted(r.decode() for r in await self._r.smembers(self._k.rooms())):
            info = await self.get(room)
            if info is not None:
                found.append(info)
        return found

    async def count(self) -> int:
        return int(await self._r.scard(self._k.rooms()))

    async def add_member(self, room: str, user_id: str, conn_id: str) -> int:
        entry = f"{room}\n{user_id}\n{conn_id}"
        self._local.add(entry)
        try:
            await self._r.sadd(self._mine, entry)
            count = await self._add(keys=self._keys(room)[1:], args=[conn_id, user_id])
            await self._r.sadd(self._k.user(user_id, "r"), room)
        except BaseException:
            self._local.discard(entry)  # not joined: restore() takes out what was written
            raise
        return int(count)

    async def remove_member(self, room: str, user_id: str, conn_id: str) -> tuple[int, bool]:
        self._local.discard(f"{room}\n{user_id}\n{conn_id}")
        count, gone, deleted = await self._remove(keys=self._keys(room), args=[conn_id, user_id])
        await self._r.srem(self._mine, f"{room}\n{user_id}\n{conn_id}")
        if gone:
            await self._r.srem(self._k.user(user_id, "r"), room)
        if deleted:
            await self._r.srem(self._k.rooms(), room)
        return int(count), bool(gone)

    async def restore(self) -> None:
        """Make Redis hold this node's memberships as the node knows them: put back those
        another node reaped (a room it emptied and so deleted is created again, as a join
        creates it), take out those whose removal failed while Redis was away."""
        held = {e.decode() for e in await self._r.smembers(self._mine)}
        for entry in held - self._local:
            room, user, conn = entry.split("\n")
            if entry not in self._local:  # not joined again meanwhile
                await self.remove_member(room, user, conn)
        for entry in self._local - held:
            if entry not in self._local:  # left meanwhile
                continue
            room, user, conn = entry.split("\n")
            if not await self._r.exists(self._k.room(room, "i")):
                await self.create(room, persistent=False)
            await self.add_member(room, user, conn)

    async def members(self, room: str) -> list[str]:
        return [u.decode() for u in await self._r.hkeys(self._k.room(room, "u"))]

    async def member_count(self, room: str) -> int:
        return int(await self._r.hlen(self._k.room(room, "u")))

    async def user_rooms(self, user_id: str) -> set[str]:
        return {r.decode() for r in await self._r.smembers(self._k.user(user_id, "r"))}
