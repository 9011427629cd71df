"""The Redis backend (``backend.type: redis``): any number of Switchboard processes, on any
number of machines, sharing one Redis or one Redis Cluster (``backend.redis.cluster``) act as
one server. This package is the only code that imports ``redis`` (redis-py's ``redis.asyncio``;
Redis >= 7 for sharded pub/sub). docs/deploy.md has the deployments."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...config import Config
from ..base import Deliver
from .broker import RedisBroker
from .conversations import RedisConversations
from .keys import Keys, client_name, connect
from .presence import RedisPresenceStore
from .rooms import RedisRoomStore
from .store import RedisStore
from .streams import RedisHistory, RedisInbox

log = structlog.get_logger(__name__)


#: Redis cannot be reached (down, restarting, a cluster without a master for a slot)
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError,
               RedisClusterException, OSError)


class RedisBackend:
    unavailable = UNAVAILABLE

    def __init__(self, node_id: str, config: Config) -> None:
        cfg = config.backend.redis
        self.node_id = node_id
        self.client = connect(cfg.url, cluster=cfg.cluster, name=client_name(node_id))
        keys = self._keys = Keys(cfg.prefix)
        self.broker = RedisBroker(self.client, keys, node_id, UNAVAILABLE)
        self.rooms = RedisRoomStore(self.client, keys, node_id)
        self.presence = RedisPresenceStore(self.client, keys, node_id)
        self._node_ttl = cfg.node_ttl
        self._heart: asyncio.Task[None] | None = None
        #: since when this node has reached Redis without a failed heartbeat; None: it cannot
        self._up_since: float | None = None
        self.history = RedisHistory(self.client, keys.room)
        self.inbox = RedisInbox(self.client, keys)
        self.conversations = RedisConversations(self.client, keys)
        self._sweep_interval = config.backend.sweep_interval
        self._sweeper: asyncio.Task[None] | None = None

    def store(self, namespace: str) -> RedisStore:
        return RedisStore(self.client, self._keys, namespace)

    async def start(self, deliver: Deliver) -> None:
        await self.client.ping()  # fail at startup, naming Redis, rather than at the first frame
        await self._beat()
        self._up_since = time.monotonic()
        await self.client.sadd(self._keys.nodes(), self.node_id)
        await self.broker.start(deliver)
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep_every())
        self._heart = loop.create_task(self._heartbeat())

    async def close(self) -> None:
        for task in (self._sweeper, self._heart):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:  # a clean stop: the others need not wait for the heartbeat to lapse
            await self.client.delete(self._keys.node(self.node_id, "hb"))
            await self.client.srem(self._keys.nodes(), self.node_id)
        except self.unavailable:
            pass
        await self.broker.close()
        await self.client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.client.ping(), 2.0))
        except (RedisError, OSError, TimeoutError):
            return False

    def sweep(self, now: float) -> None:
        """Nothing to do at once: Redis expires keys itself (``_sweep_every`` trims last_seen)."""

    # --- nodes that die without a word ------------------------------------------------------
    async def _beat(self) -> bool:
        """Renew this node's heartbeat; True when it had lapsed (or never was)."""
        old = await self.client.set(self._keys.node(self.node_id, "hb"), b"1",
                                    px=int(self._node_ttl * 1000), get=True)
        return old is None

    async def _heartbeat(self) -> None:
        """Renew this node's heartbeat every third of ``node_ttl`` (every second while Redis
        cannot be reached); every half of it, take the connections of nodes whose heartbeat
        lapsed out of presence and rooms.

        A lapse is a node's death only if Redis was there to be beaten on: so this node reaps
        once it has itself reached Redis for a whole ``node_ttl`` (after a Redis restart or a
        network cut that kept every node away, each has beaten again by then). When this
        node's own heartbeat had lapsed, or Redis was away, it puts its connections and
        memberships back as it knows them (``restore``): another node may have reaped it, and a
        connection that closed meanwhile could not be taken out."""
        period = self._node_ttl / 3
        next_reap, wait, lapsed = 0.0, period, False
        while True:
            await asyncio.sleep(wait)
            try:
                lapsed = await self._beat() or lapsed
                await self.client.sadd(self._keys.nodes(), self.node_id)
                if lapsed or self._up_since is None:
                    lapsed = not await self._restore()
                now = time.monotonic()
                if self._up_since is None:
                    self._up_since = now
                    log.info("redis_heartbeat_resumed")
                wait = period
                if now >= next_reap and now - self._up_since >= self._node_ttl:
                    next_reap = now + self._node_ttl / 2
                    await self.reap()
            except self.unavailable as exc:
                if self._up_since is not None:
                    log.warning("redis_heartbeat_failed", error=str(exc) or type(exc).__name__)
                self._up_since, wait = None, min(period, 1.0)

    async def _restore(self) -> bool:
        """Put this node's connections and memberships in Redis as the node knows them; False
        (try again at the next beat) while a reap of this node holds its lock."""
        if await self.client.exists(self._keys.node(self.node_id, "reap")):
            return False
        await self.presence.restore()
        await self.rooms.restore()
        return True

    async def reap(self) -> list[str]:
        """Clean up after every node whose heartbeat lapsed; returns their ids."""
        keys, reaped = self._keys, []
        for raw in await self.client.smembers(keys.nodes()):
            node = raw.decode()
            if node == self.node_id or await self.client.exists(keys.node(node, "hb")):
                continue
            # one reaper per dead node, however many nodes notice at once
            lock = keys.node(node, "reap")
            if not await self.client.set(lock, self.node_id.encode(), nx=True,
                                         px=int(self._node_ttl * 1000)):
                continue
            # beaten again meanwhile: it beats, then looks for this lock (``_restore``) and
            # this looks for its beat after taking the lock, so one of the two sees the other
            if not await self.client.exists(keys.node(node, "hb")):
                await self._reap(node)
                reaped.append(node)
            await self.client.delete(lock)
        return reaped

    async def _reap(self, node: str) -> None:
        keys = self._keys
        members = await self.client.smembers(keys.node(node, "m"))
        for entry in members:
            room, user, conn = entry.decode().split("\n")
            await self.rooms.remove_member(room, user, conn)
        conns = await self.client.hgetall(keys.node(node, "c"))
        users = set()
        for conn, user in conns.items():
            users.add(user.decode())
            await self.presence.remove_connection(user.decode(), conn.decode())
        for user in users:
            if not await self.presence.connections(user):
                await self.presence.mark_offline(user)
        await self.client.delete(keys.node(node, "m"), keys.node(node, "c"))
        await self.client.srem(keys.nodes(), node)
        log.warning("node_reaped", node=node, connections=len(conns), memberships=len(members),
                    users=len(users))

    async def _sweep_every(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                await self.presence.sweep()
            except (RedisError, OSError) as exc:
                log.warning("redis_sweep_failed", error=str(exc))


def create_redis_backend(config: Config, node_id: str) -> Any:
    return RedisBackend(node_id, config)
