"""In-memory backend: one process, nothing survives a restart (offsets carry an epoch so a
client resuming across a restart gets ``recovered: false`` instead of a silent gap).

Everything kept for a user or a room that is gone has a bound (docs/operations.md, "Memory"):
a room's members and a user's rooms and connections go with them; ``last_seen`` stays
``presence.last_seen_ttl`` (set by the presence plugin; a week without it), history messages
``history_ttl``, inbox messages ``inbox.ttl``, private conversations (their messages and each
user's list of them) ``conversations.history_ttl``, and a plugin's stored keys and stream
entries their own ``ttl``. A sweep every ``backend.sweep_interval`` seconds drops what expired
and forgets the streams and users left with nothing, whether or not anyone writes or reads
again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import secrets
import time
from typing import Any, Callable

import structlog

from ..config import Config
from .memory_broker import MemoryBroker
from .memory_conversations import MemoryConversations
from .memory_store import MemoryStore, MemoryStoreData
from .memory_streams import Streams
from .base import (LAST_SEEN_TTL, Deliver, HistoryPage, RoomInfo,
                   UserPresence)

log = structlog.get_logger(__name__)


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


class MemoryHistory:
    """Per-room streams; offsets are ``<epoch>:<seq>``."""

    def __init__(self, epoch: str) -> None:
        self._streams = Streams(epoch)
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
        self._streams = Streams(epoch)

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
        self.history = MemoryHistory(secrets.token_hex(4))
        self.broker = MemoryBroker(self.history.keep)
        self.rooms = MemoryRoomStore()
        self.presence = MemoryPresenceStore()
        # the room history, the inbox and the private conversations each number in an epoch
        # of their own: an offset of one is never mistaken for a position in another
        self.inbox = MemoryInbox(secrets.token_hex(4))
        self._dm_history = MemoryHistory(secrets.token_hex(4))
        self.conversations = MemoryConversations(self._dm_history)
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
        for store in (self.history, self.inbox, self.presence, self._store, self.conversations,
                      self._dm_history):
            store.sweep(now)

    async def _sweep_every(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                self.sweep(time.time())
            except Exception:  # a bug here must not stop the next sweeps
                log.exception("memory_sweep_failed")
