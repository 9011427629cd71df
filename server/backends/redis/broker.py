"""The broker over Redis sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``, Redis >= 7, on one Redis
and on a Redis Cluster alike): one channel per room, per user, plus ``all`` and ``control``.

A publication is handed to this node's own connections first, at once, then published with
this node's id in a small header; every node drops its own echo (python-socketio's habit), so
a node that loses Redis still serves its own clients. A room message that is kept goes through
one Lua script per room that numbers it, appends it to the room's history stream and publishes
it (Centrifuge's rule: kept and published in one step, offsets in order).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from ...protocol import encode
from ..base import DEFAULT_ROUTE, Deliver, Route, TargetKind
from .keys import Keys

log = structlog.get_logger(__name__)

#: where the offset goes in a kept frame before the script numbers it: random for each process,
#: so no user-written text (a username, a message) can be taken for it
PLACEHOLDER = f"offset-{secrets.token_hex(16)}"
_SEP = b"\n"

# KEYS: history stream, its counter; ARGV: size, ttl ms, now ms, frame with PLACEHOLDER,
# header + separator, channel, a new epoch, PLACEHOLDER, counter ttl ms
KEEP_AND_PUBLISH = """
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[7]
  redis.call('HSET', KEYS[2], 'e', epoch)
end
local seq = redis.call('HINCRBY', KEYS[2], 's', 1)
redis.call('HSET', KEYS[2], 't', ARGV[2], 'z', ARGV[1])
local offset = epoch .. ':' .. seq
local tpl = ARGV[4]
local i, j = string.find(tpl, ARGV[8], 1, true)
local frame = string.sub(tpl, 1, i - 1) .. offset .. string.sub(tpl, j + 1)
local size = tonumber(ARGV[1])
if size > 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', size, '0-' .. seq, 'f', frame, 't', ARGV[3])
  if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
end
if tonumber(ARGV[9]) > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[9]) else redis.call('PERSIST', KEYS[2]) end
if ARGV[6] ~= '' then redis.call('SPUBLISH', ARGV[6], ARGV[5] .. frame) end
return {offset, frame}
"""


def counter_ttl_ms(ttl: float) -> int:
    """How long a stream's counter outlives its last message: a day past the stream's own
    ttl, then it goes, and a client catching up with an offset of the old epoch is told
    ``recovered: false`` (never a silent gap). 0 (kept for ever) with a stream kept for ever."""
    return int((ttl + 86400) * 1000) if ttl > 0 else 0


def new_epoch() -> str:
    return secrets.token_hex(4)


def keep_args(message: dict[str, Any], *, size: int, ttl: float, header: bytes = b"",
              channel: str = "") -> list[Any]:
    """ARGV of :data:`KEEP_AND_PUBLISH` (and of the scripts built on it) to keep ``message``,
    whose ``offset`` is set to :data:`PLACEHOLDER` here: the caller sets the real one from the
    script's answer. No ``channel``: kept, not published."""
    message["offset"] = PLACEHOLDER
    return [size, int(ttl * 1000), int(time.time() * 1000), encode(message), header, channel,
            new_epoch(), PLACEHOLDER, counter_ttl_ms(ttl)]


class RedisBroker:
    def __init__(self, client: Redis | RedisCluster, keys: Keys, node_id: str,
                 unavailable: tuple[type[BaseException], ...]) -> None:
        self._unavailable = unavailable
        self._client = client
        self._keys = keys
        self._node = node_id.encode()
        self._deliver: Deliver | None = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        #: channel name -> (kind, key) for every channel this node is subscribed to
        self._channels: dict[bytes, tuple[TargetKind, str]] = {}
        self._keep = client.register_script(KEEP_AND_PUBLISH)
        self._last_error = 0.0
        # a cluster client polls each master's connection in turn, each for this long: short,
        # or a message on one master waits out the others' share (measured: 0.65 s at 1 s)
        self._wait = 0.02 if isinstance(client, RedisCluster) else 1.0

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def close(self) -> None:
        self._deliver = None
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._pubsub is not None:
            try:
                await self._pubsub.aclose()
            except (RedisError, OSError):
                pass
        self._channels.clear()

    # --- channels ---------------------------------------------------------------------------
    async def subscribe(self, kind: TargetKind, key: str) -> None:
        name = self._keys.channel(kind, key).encode()
        if name not in self._channels:
            await self._pubsub.ssubscribe(name)
            self._channels[name] = (kind, key)

    async def unsubscribe(self, kind: TargetKind, key: str) -> None:
        name = self._keys.channel(kind, key).encode()
        if self._channels.pop(name, None) is not None:
            await self._pubsub.sunsubscribe(name)

    def subscribed(self) -> list[bytes]:
        return list(self._channels)

    # --- publishing -------------------------------------------------------------------------
    def _header(self, route: Route) -> bytes:
        return encode({"n": self._node.decode(), "x": route.exclude, "u": route.exclude_user,
                       "d": route.droppable}) + _SEP

    def _local(self, kind: TargetKind, key: str, payload: bytes, route: Route) -> None:
        if self._deliver is not None and self._keys.channel(kind, key).encode() in self._channels:
            self._deliver(kind, key, payload, route)

    async def publish(self, kind: TargetKind, key: str, payload: bytes,
                      route: Route = DEFAULT_ROUTE) -> None:
        self._local(kind, key, payload, route)
        try:
            await self._client.execute_command("SPUBLISH", self._keys.channel(kind, key),
                                               self._header(route) + payload)
        except self._unavailable as exc:
            # live delivery is at most once: this node's own clients got it; the other nodes'
            # miss it while Redis is away (what needs keeping goes through publish_kept)
            self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error > 5.0:
            self._last_error = now
            log.warning("redis_unavailable", error=str(exc) or type(exc).__name__)

    async def publish_kept(self, room: str, message: dict[str, Any], *, size: int, ttl: float,
                           route: Route = DEFAULT_ROUTE) -> str:
        keys = self._keys
        offset, frame = await self._keep(
            keys=[keys.room(room, "h"), keys.room(room, "m")],
            args=keep_args(message, size=size, ttl=ttl, header=self._header(route),
                           channel=keys.channel("room", room)))
        message["offset"] = offset.decode()
        self._local("room", room, frame, route)
        return str(message["offset"])

    # --- receiving --------------------------------------------------------------------------
    async def _read(self) -> None:
        pubsub = self._pubsub
        while True:
            try:
                if not self._channels:
                    await asyncio.sleep(0.05)  # nothing to read until the first subscription
                    continue
                message = await pubsub.get_sharded_message(ignore_subscribe_messages=True,
                                                           timeout=self._wait)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._warn(exc)
                await asyncio.sleep(0.5)  # then the read reconnects and resubscribes
                continue
            if message is None or message.get("type") not in ("smessage", "message"):
                continue
            self._received(message["channel"], message["data"])

    def _received(self, channel: bytes, data: bytes) -> None:
        target = self._channels.get(channel)
        head, _, payload = data.partition(_SEP)
        if target is None or self._deliver is None:
            return
        header = orjson.loads(head)
        if header.get("n") == self._node.decode():
            return  # our own: delivered here before it was published
        try:
            self._deliver(target[0], target[1], payload,
                          Route(header.get("x"), header.get("u"), bool(header.get("d"))))
        except Exception:
            log.exception("deliver_failed", channel=channel.decode(errors="replace"))
