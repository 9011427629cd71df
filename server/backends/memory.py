"""In-memory backend: one process, nothing survives a restart (offsets carry an epoch so a
client resuming across a restart gets ``recovered: false`` instead of a silent gap).

Everything kept for a user or a room that is gone has a bound (docs/operations.md, "Memory"):
a room's members and a user's rooms and connections go with them; ``last_seen`` stays
``presence.last_seen_ttl`` (set by the presence plugin; a week without it), history messages
``history_ttl``, inbox messages ``inbox.ttl`` and a plugin's stored keys and stream entries their
own ``ttl``. A sweep every ``backend.sweep_interval`` seconds
drops what expired and forgets the streams and users left with nothing, whether or not anyone
writes or reads again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import secrets
import time
from collections import deque
from typing import Any, Callable

import orjson
import structlog

from ..config import Config
from ..protocol import encode
from .memory_broker import MemoryBroker
from .memory_store import MemoryStore, MemoryStoreData
from .base import (LAST_SEEN_TTL, Deliver, HistoryPage, RoomInfo,
                   UserPresence)

log = structlog.get_logger(__name__)


def _parse_offset(offset: str | None) -> tuple[str, int] | None:
    """``<epoch>:<seq>`` -> (epoch, seq); None for anything else."""
    epoch, _, seq = (offset or "").rpartition(":")
    if not epoch or not (seq.isascii() and seq.isdigit()):
        return None
    return epoch, int(seq)


class MemoryRoomStore:
    def __init__(self) -> None:
        self._rooms: dict[str, RoomInfo] = {}
        # room -> user -> conn ids; user -> rooms. Neither keeps an empty entry.
        self._members: dict[str, dict[str, set[str]]] = {}
        self._user_rooms: dict[str, set[str]] = {}

    def _copy(self, room: str, info: RoomInfo) -> RoomInfo:
        return dataclasses.replace(info, members=len(self._members.get(room, ())))

    async def get(self, room: str) -> RoomInfo | None:
        info = self._rooms.get(room)
        return self._copy(room, info) if info is not None else None

    async def create(self, room: str, *, name: str = "", description: str = "",
                     max_members: int | None = None,
                     persistent: bool = True) -> tuple[RoomInfo, bool]:
        existing = self._rooms.get(room)
        if existing is not None:
            return self._copy(room, existing), False
        info = RoomInfo(room, name or room, description, time.time(), max_members,
                        persistent=persistent)
        self._rooms[room] = info
        return self._copy(room, info), True

    async def delete(self, room: str) -> bool:
        found = self._rooms.pop(room, None) is not None
        for user in self._members.pop(room, {}):
            self._leave(user, room)
        return found

    def _leave(self, user_id: str, room: str) -> None:
        rooms = self._user_rooms.get(user_id)
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._user_rooms[user_id]

    async def list(self) -> list[RoomInfo]:
        return [self._copy(room, info) for room, info in self._rooms.items()]

    async def count(self) -> int:
        return len(self._rooms)

    async def add_member(self, room: str, user_id: str, conn_id: str) -> int:
        members = self._members.setdefault(room, {})
        members.setdefault(user_id, set()).add(conn_id)
        self._user_rooms.setdefault(user_id, set()).add(room)
        return len(members)

    async def remove_member(self, room: str, user_id: str, conn_id: str) -> tuple[int, bool]:
        members = self._members.get(room)
        if not members or user_id not in members:
            return (len(members) if members else 0), False
        conns = members[user_id]
        conns.discard(conn_id)
        gone = not conns
        if gone:
            del members[user_id]
            self._leave(user_id, room)
        if not members:
            del self._members[room]
            info = self._rooms.get(room)
            if info is not None and not info.persistent:
                del self._rooms[room]
        return len(members), gone

    async def members(self, room: str) -> list[str]:
        return list(self._members.get(room, ()))

    async def member_count(self, room: str) -> int:
        return len(self._members.get(room, ()))

    async def user_rooms(self, user_id: str) -> set[str]:
        return set(self._user_rooms.get(user_id, ()))


class _Presence:
    """An online user: open connections, the status they set, announced online or not, and the
    username of the last connection (kept through the grace period, when none is open)."""

    __slots__ = ("announced", "conns", "status", "username")

    def __init__(self) -> None:
        self.conns: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] | None = None
        self.announced = False
        self.username: str | None = None


class MemoryPresenceStore:
    def __init__(self, last_seen_ttl: float = LAST_SEEN_TTL) -> None:
        self._online: dict[str, _Presence] = {}  # in the order users came online
        #: when each user's connections last dropped to none, oldest first
        self._last_seen: dict[str, float] = {}
        self._last_seen_ttl = last_seen_ttl

    def set_last_seen_ttl(self, seconds: float) -> None:
        self._last_seen_ttl = seconds

    async def add_connection(self, user_id: str, conn_id: str, info: dict[str, Any]) -> int:
        entry = self._online.setdefault(user_id, _Presence())
        entry.conns[conn_id], entry.username = info, info.get("username") or entry.username
        return len(entry.conns)

    async def remove_connection(self, user_id: str, conn_id: str) -> int:
        entry = self._online.get(user_id)
        if entry is None or entry.conns.pop(conn_id, None) is None:
            return len(entry.conns) if entry else 0
        if not entry.conns:
            self._last_seen.pop(user_id, None)  # to the end: the newest goes last
            self._last_seen[user_id] = round(time.time(), 3)
            if not entry.announced:
                del self._online[user_id]
        return len(entry.conns)

    async def connections(self, user_id: str) -> dict[str, dict[str, Any]]:
        entry = self._online.get(user_id)
        return {conn: dict(info) for conn, info in entry.conns.items()} if entry else {}

    async def online_users(self, *, limit: int | None = None, offset: int = 0) -> list[str]:
        users = list(self._online)[offset:]
        return users if limit is None else users[:limit]

    async def online_count(self) -> int:
        return len(self._online)

    async def snapshot(self, user_ids: list[str]) -> list[UserPresence]:
        return [self._view(user_id) for user_id in user_ids]

    def _view(self, user_id: str) -> UserPresence:
        last_seen = self._last_seen.get(user_id)
        entry = self._online.get(user_id)
        if entry is None:
            return UserPresence(user_id, False, "offline", 0, last_seen)
        extra = dict(entry.status or {})
        status = extra.pop("status", "online")
        infos = list(entry.conns.values())
        return UserPresence(user_id, True, status, len(infos), last_seen,
                            username=infos[0].get("username") if infos else entry.username,
                            connected_at=min((i["connected_at"] for i in infos), default=None),
                            extra=extra)

    async def set_status(self, user_id: str, status: dict[str, Any]) -> None:
        entry = self._online.get(user_id)
        if entry is not None:
            entry.status = dict(status)

    async def get_status(self, user_id: str) -> dict[str, Any] | None:
        entry = self._online.get(user_id)
        return dict(entry.status) if entry and entry.status is not None else None

    async def last_seen(self, user_id: str) -> float | None:
        return self._last_seen.get(user_id)

    async def mark_online(self, user_id: str) -> bool:
        entry = self._online.get(user_id)
        if entry is None or entry.announced:
            return False
        entry.announced = True
        return True

    async def mark_offline(self, user_id: str) -> float | None:
        entry = self._online.get(user_id)
        if entry is None or entry.conns or not entry.announced:
            return None
        del self._online[user_id]
        return self._last_seen.get(user_id)

    def sweep(self, now: float) -> None:
        """Forget the ``last_seen`` older than ``presence.last_seen_ttl`` (from the oldest)."""
        seen, cutoff = self._last_seen, now - self._last_seen_ttl
        for user_id in [u for u, _ in itertools.takewhile(lambda e: e[1] <= cutoff, seen.items())]:
            del seen[user_id]


#: slots of the numbering floors that forgotten streams leave behind (see _Streams)
_FLOOR_SLOTS = 4096


class _Stream:
    """A bounded, expiring sequence. ``seq`` numbers every item ever added and never goes
    back, so an offset is never reused within an epoch; ``items`` holds the kept ones, with
    consecutive numbers."""

    __slots__ = ("seq", "ttl", "items")

    def __init__(self, seq: int = 0) -> None:
        self.seq = seq
        self.ttl = 0.0
        #: (number, time added, the message encoded): readers decode their own copy
        self.items: deque[tuple[int, float, bytes]] = deque()

    def add(self, message: bytes, *, size: int, ttl: float, now: float) -> None:
        self.seq += 1
        self.ttl = ttl
        items = self.items
        items.append((self.seq, now, message))
        while len(items) > size:
            items.popleft()
        self.expire(now)

    def expire(self, now: float) -> None:
        items = self.items
        if self.ttl > 0:
            while items and now - items[0][1] > self.ttl:
                items.popleft()

    def first(self) -> int:
        """The number of the oldest kept item (``seq + 1`` when none is kept)."""
        return self.items[0][0] if self.items else self.seq + 1

    def after(self, seq: int, limit: int | None = None) -> list[dict[str, Any]]:
        """The kept items numbered above ``seq``, oldest first, at most ``limit``: copies."""
        found = itertools.islice(self.items, max(seq + 1 - self.first(), 0), None)
        if limit is not None:
            found = itertools.islice(found, max(limit, 0))
        return [orjson.loads(m) for _, _, m in found]


class _Streams:
    """Streams by key (room or user) under one epoch. Expired items are dropped when a stream
    is read and by :meth:`sweep`, which also forgets every stream left with no item.

    The numbering of a key must not go back within the epoch even when its stream was
    forgotten: a forgotten stream's ``seq`` raises the floor of its key's slot (one of
    ``_FLOOR_SLOTS``, by hash), and a stream starts at its slot's floor. That takes fixed
    memory; a key sharing a slot with a forgotten stream numbered higher starts above where
    it was, which a client catching up sees as ``recovered: false``, never as a silent gap."""

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self._streams: dict[str, _Stream] = {}
        self._floors = [0] * _FLOOR_SLOTS

    def offset(self, seq: int) -> str:
        return f"{self.epoch}:{seq}"

    def seq_of(self, offset: str | None) -> int | None:
        """The number an offset of this epoch stands for; None for any other."""
        parsed = _parse_offset(offset)
        return parsed[1] if parsed is not None and parsed[0] == self.epoch else None

    def _slot(self, key: str) -> int:
        return hash(key) % _FLOOR_SLOTS

    def kept(self, key: str) -> bool:
        """Whether ``key`` has a stream (possibly with only expired items)."""
        return key in self._streams

    def read(self, key: str) -> _Stream:
        """``key``'s stream without its expired items; an empty one (not kept) when it has none."""
        stream = self._streams.get(key)
        if stream is None:
            return _Stream(self._floors[self._slot(key)])
        stream.expire(time.time())
        return stream

    def add(self, key: str, message: dict[str, Any], *, size: int, ttl: float) -> bytes:
        """Set ``message``'s ``offset``, keep it encoded; returns the encoding."""
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(self._floors[self._slot(key)])
        message["offset"] = self.offset(stream.seq + 1)
        # a copy the exact length: orjson's own bytes keep a buffer of ~8 KiB whatever the
        # JSON's length (orjson >= 3.12), ten times a typical message, for as long as it is kept
        data = bytes(memoryview(encode(message)))
        stream.add(data, size=size, ttl=ttl, now=time.time())
        return data

    def sweep(self, now: float) -> list[str]:
        """Drop the expired items of every stream; forget the streams left empty and return
        their keys."""
        empty = []
        for key, stream in self._streams.items():
            stream.expire(now)
            if not stream.items:
                empty.append(key)
        for key in empty:
            self.forget(key)
        return empty

    def forget(self, key: str) -> None:
        """Drop ``key``'s stream; its numbering goes on from its slot's floor."""
        stream = self._streams.pop(key, None)
        if stream is not None:
            slot = self._slot(key)
            self._floors[slot] = max(self._floors[slot], stream.seq)


class MemoryHistory:
    """Per-room streams; offsets are ``<epoch>:<seq>``."""

    def __init__(self, epoch: str) -> None:
        self._streams = _Streams(epoch)
        self._expired: Callable[[str], None] | None = None

    async def append(self, room: str, message: dict[str, Any], *, size: int, ttl: float) -> str:
        self._streams.add(room, message, size=size, ttl=ttl)
        return str(message["offset"])

    def keep(self, room: str, message: dict[str, Any], *, size: int, ttl: float) -> bytes:
        """:meth:`append` in one synchronous step, returning the encoded frame."""
        return self._streams.add(room, message, size=size, ttl=ttl)

    async def since(self, room: str, offset: str | None, *, limit: int) -> HistoryPage:
        stream = self._streams.read(room)
        top = self._streams.offset(stream.seq)
        if offset is None:
            return HistoryPage(stream.after(stream.seq - limit, limit), True, top)
        seq = self._streams.seq_of(offset)
        if seq is None or seq > stream.seq:  # another epoch (a restart), or not an offset here
            return HistoryPage(stream.after(0, limit), False, top)
        return HistoryPage(stream.after(seq, limit), stream.first() <= seq + 1, top)

    async def current(self, room: str) -> str:
        return self._streams.offset(self._streams.read(room).seq)

    async def drop(self, room: str) -> None:
        self._streams.forget(room)

    def on_expired(self, callback: Callable[[str], None]) -> None:
        self._expired = callback

    def sweep(self, now: float) -> None:
        for room in self._streams.sweep(now):
            if self._expired is not None:
                self._expired(room)


class MemoryInbox:
    """Per-user streams; an acknowledged message is dropped at once."""

    def __init__(self, epoch: str) -> None:
        self._streams = _Streams(epoch)

    async def push(self, user_id: str, message: dict[str, Any], *, size: int, ttl: float) -> str:
        self._streams.add(user_id, message, size=size, ttl=ttl)
        return str(message["offset"])

    async def fetch(self, user_id: str, since: str | None = None, *,
                    limit: int = 100) -> list[dict[str, Any]]:
        if not self._streams.kept(user_id):  # most users, most of the time (every connect asks)
            return []
        return self._streams.read(user_id).after(self._streams.seq_of(since) or 0, limit)

    async def ack(self, user_id: str, offset: str) -> None:
        seq = self._streams.seq_of(offset)
        if seq is None:
            return
        items = self._streams.read(user_id).items
        while items and items[0][0] <= seq:  # only what is there: later messages stay
            items.popleft()

    def sweep(self, now: float) -> None:
        self._streams.sweep(now)


class MemoryBackend:
    """``config`` gives the sweep's interval, read once."""

    unavailable: tuple[type[BaseException], ...] = ()  # it never is

    def __init__(self, node_id: str, config: Config | None = None) -> None:
        config = config or Config()
        self.node_id = node_id
        epoch = secrets.token_hex(4)
        self.history = MemoryHistory(epoch)
        self.broker = MemoryBroker(self.history.keep)
        self.rooms = MemoryRoomStore()
        self.presence = MemoryPresenceStore()
        self.inbox = MemoryInbox(epoch)
        self._store = MemoryStoreData()
        self._sweep_interval = config.backend.sweep_interval
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, deliver: Deliver) -> None:
        await self.broker.start(deliver)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_every())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        await self.broker.close()

    async def ping(self) -> bool:
        return True

    def store(self, namespace: str) -> MemoryStore:
        return MemoryStore(self._store, namespace)

    def sweep(self, now: float) -> None:
        """Release what expired by ``now`` (Unix seconds) in every store."""
        for store in (self.history, self.inbox, self.presence, self._store):
            store.sweep(now)

    async def _sweep_every(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                self.sweep(time.time())
            except Exception:  # a bug here must not stop the next sweeps
                log.exception("memory_sweep_failed")
