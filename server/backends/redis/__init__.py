"""The Redis backend (``backend.type: redis``): any number of Switchboard processes, on any
number of machines, sharing one Redis or one Redis Cluster (``backend.redis.cluster``) act as
one server. This package is the only code that imports ``redis`` (redis-py's ``redis.asyncio``;
Redis >= 7 for sharded pub/sub). docs/deploy.md has the deployments."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...config import Config
from ..base import Deliver
from .broker import RedisBroker
from .keys import Keys, connect
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
        self.client = connect(cfg.url, cluster=cfg.cluster)
        keys = self._keys = Keys(cfg.prefix)
        self.broker = RedisBroker(self.client, keys, node_id, UNAVAILABLE)
        self.rooms = RedisRoomStore(self.client, keys)
        self.presence = RedisPresenceStore(self.client, keys)
        self.history = RedisHistory(self.client, keys)
        self.inbox = RedisInbox(self.client, keys)
        self._sweep_interval = config.backend.sweep_interval
        self._sweeper: asyncio.Task[None] | None = None

    def store(self, namespace: str) -> RedisStore:
        return RedisStore(self.client, self._keys, namespace)

    async def start(self, deliver: Deliver) -> None:
        await self.client.ping()  # fail at startup, naming Redis, rather than at the first frame
        await self.broker.start(deliver)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_every())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await self.broker.close()
        await self.client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.client.ping(), 2.0))
        except (RedisError, OSError, TimeoutError):
            return False

    def sweep(self, now: float) -> None:
        """Nothing to do at once: Redis expires keys itself (``_sweep_every`` trims last_seen)."""

    async def _sweep_every(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                await self.presence.sweep()
            except (RedisError, OSError) as exc:
                log.warning("redis_sweep_failed", error=str(exc))


def create_redis_backend(config: Config, node_id: str) -> Any:
    return RedisBackend(node_id, config)
