"""Key and channel names, and the client. Every key of a room, of a user or of a plugin's stored
key carries a hash tag (``{room:general}``), so that on a Redis Cluster everything one
operation touches lives in one slot: a room's history stream, its counter and its channel go
together. The few cluster-wide indexes (rooms, online users, last seen) are keys of their own,
never touched in the same command as another slot's."""

from __future__ import annotations

import re
from typing import Any

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster


class Keys:
    def __init__(self, prefix: str) -> None:
        self.p = prefix

    # --- rooms
    def room(self, room: str, part: str) -> str:
        """``i`` info, ``c`` conn -> user, ``u`` user -> conns, ``h`` history, ``m`` its counter"""
        return f"{self.p}:{{room:{room}}}:{part}"

    def rooms(self) -> str:
        return f"{self.p}:rooms"

    # --- users
    def user(self, user_id: str, part: str) -> str:
        """``p`` presence, ``r`` rooms, ``ih`` inbox stream, ``im`` its counter, ``ch`` channel,
        ``cz`` the conversations by time, ``cl`` their last messages"""
        return f"{self.p}:{{user:{user_id}}}:{part}"

    # --- private conversations: ``h`` a pair's stream, ``m`` its counter (``pair_key``)
    def conversation(self, pair: str, part: str) -> str:
        return f"{self.p}:{{dm:{pair}}}:{part}"

    def online(self) -> str:
        return f"{self.p}:online"

    def last_seen(self) -> str:
        return f"{self.p}:last_seen"

    # --- nodes: a heartbeat each, and what each holds, for when one dies without a word
    def nodes(self) -> str:
        return f"{self.p}:nodes"

    def node(self, node_id: str, part: str) -> str:
        """``hb`` heartbeat, ``c`` conn -> user, ``m`` memberships, ``reap`` the reaper's lock"""
        return f"{self.p}:{{node:{node_id}}}:{part}"

    # --- plugins' stores
    def stored(self, namespace: str, key: str) -> str:
        return f"{self.p}:s:{namespace}:{{{key}}}"

    # --- channels
    def channel(self, kind: str, key: str) -> str:
        if kind == "room":
            return self.room(key, "ch")
        if kind == "user":
            return self.user(key, "ch")
        return f"{self.p}:{kind}"


#: most connections to Redis (per node of a cluster), and how long a command waits for one
POOL_SIZE = 128
POOL_TIMEOUT = 5.0


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(data: bytes | str | None) -> Any:
    return None if data is None else orjson.loads(data)


def client_name(node_id: str) -> str:
    """What each of a node's Redis connections is called (``CLIENT SETNAME``), so that
    ``CLIENT LIST`` tells whose they are: ``switchboard-<node>``, spaces and the like replaced."""
    return "switchboard-" + re.sub(r"[^A-Za-z0-9._:-]", "_", node_id)


def connect(url: str, *, cluster: bool, name: str | None = None) -> Redis | RedisCluster:
    """The client: one connection pool for commands (``decode_responses`` off: bytes in, bytes
    out), its connections named ``name``. A cluster client follows MOVED/ASK and knows every
    master."""
    if cluster:
        return RedisCluster.from_url(url, decode_responses=False, client_name=name)
    # a burst beyond the pool waits for a connection (at most POOL_TIMEOUT s) instead of failing
    pool = BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE, timeout=POOL_TIMEOUT,
                                           decode_responses=False, health_check_interval=10,
                                           client_name=name)
    return Redis.from_pool(pool)  # the client owns the pool: closing it closes the connections
