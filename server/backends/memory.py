"""In-memory backend: one process, nothing survives a restart (offsets carry an epoch so a
client resuming across a restart gets ``recovered: false`` instead of a silent gap)."""

from __future__ import annotations

import secrets
import time
from collections import defaultdict, deque
from typing import Any

from .base import DEFAULT_ROUTE, Deliver, HistoryPage, RoomInfo, Route, TargetKind


def _parse_offset(offset: str | None) -> tuple[str, int] | None:
    if not offset or ":" not in offset:
        return None
    epoch, _, seq = offset.rpartition(":")
    try:
        return epoch, int(seq)
    except ValueError:
        return None


class MemoryBroker:
    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def close(self) -> None:
        self._deliver = None

    async def publish(self, kind: TargetKind, key: str, payload: bytes,
                      route: Route = DEFAULT_ROUTE) -> None:
        if self._deliver is not None:
            self._deliver(kind, key, payload, route)


class MemoryRoomStore:
    def __init__(self) -> None:
        self._rooms: dict[str, RoomInfo] = {}
        # room -> user -> conn ids
        self._members: dict[str, dict[str, set[str]]] = defaultdict(dict)
        self._user_rooms: dict[str, set[str]] = defaultdict(set)

    async def get(self, room: str) -> RoomInfo | None:
        info = self._rooms.get(room)
        if info is not None:
            info.members = len(self._members.get(room, ()))
        return info

    async def create(self, room: str, *, name: str = "", description: str = "",
                     max_members: int | None = None) -> tuple[RoomInfo, bool]:
        existing = self._rooms.get(room)
        if existing is not None:
            return existing, False
        info = RoomInfo(room, name or room, description, time.time(), max_members)
        self._rooms[room] = info
        return info, True

    async def delete(self, room: str) -> bool:
        found = self._rooms.pop(room, None) is not None
        for user in self._members.pop(room, {}):
            self._user_rooms[user].discard(room)
        return found

    async def list(self) -> list[RoomInfo]:
        for room, info in self._rooms.items():
            info.members = len(self._members.get(room, ()))
        return list(self._rooms.values())

    async def count(self) -> int:
        return len(self._rooms)

    async def add_member(self, room: str, user_id: str, conn_id: str) -> int:
        members = self._members[room]
        members.setdefault(user_id, set()).add(conn_id)
        self._user_rooms[user_id].add(room)
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
            rooms = self._user_rooms.get(user_id)
            if rooms is not None:
                rooms.discard(room)
                if not rooms:
                    del self._user_rooms[user_id]
        return len(members), gone

    async def members(self, room: str) -> list[str]:
        return list(self._members.get(room, ()))

    async def member_count(self, room: str) -> int:
        return len(self._members.get(room, ()))

    async def user_rooms(self, user_id: str) -> set[str]:
        return set(self._user_rooms.get(user_id, ()))


class MemoryPresenceStore:
    def __init__(self) -> None:
        self._conns: dict[str, dict[str, dict[str, Any]]] = {}
        self._status: dict[str, dict[str, Any]] = {}
        self._last_seen: dict[str, float] = {}

    async def add_connection(self, user_id: str, conn_id: str, info: dict[str, Any]) -> int:
        conns = self._conns.setdefault(user_id, {})
        conns[conn_id] = info
        self._last_seen[user_id] = time.time()
        return len(conns)

    async def remove_connection(self, user_id: str, conn_id: str) -> int:
        conns = self._conns.get(user_id)
        if conns is None:
            return 0
        conns.pop(conn_id, None)
        self._last_seen[user_id] = time.time()
        if not conns:
            del self._conns[user_id]
            return 0
        return len(conns)

    async def connections(self, user_id: str) -> dict[str, dict[str, Any]]:
        return dict(self._conns.get(user_id, {}))

    async def online_users(self) -> list[str]:
        return list(self._conns)

    async def online_count(self) -> int:
        return len(self._conns)

    async def set_status(self, user_id: str, status: dict[str, Any]) -> None:
        self._status[user_id] = dict(status)

    async def get_status(self, user_id: str) -> dict[str, Any] | None:
        return self._status.get(user_id)

    async def last_seen(self, user_id: str) -> float | None:
        return self._last_seen.get(user_id)


class _Stream:
    __slots__ = ("seq", "items")

    def __init__(self) -> None:
        self.seq = 0
        self.items: deque[tuple[int, float, dict[str, Any]]] = deque()

    def trim(self, size: int, ttl: float, now: float) -> None:
        items = self.items
        while len(items) > size:
            items.popleft()
        if ttl > 0:
            while items and now - items[0][1] > ttl:
                items.popleft()


class MemoryHistory:
    """Per-room bounded streams; offsets are ``<epoch>:<seq>``."""

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self._streams: dict[str, _Stream] = defaultdict(_Stream)

    def _offset(self, seq: int) -> str:
        return f"{self.epoch}:{seq}"

    async def append(self, room: str, message: dict[str, Any], *, size: int, ttl: float) -> str:
        stream = self._streams[room]
        stream.seq += 1
        offset = self._offset(stream.seq)
        message["offset"] = offset
        now = time.time()
        if size > 0:
            stream.items.append((stream.seq, now, message))
        stream.trim(size, ttl, now)
        return offset

    async def since(self, room: str, offset: str | None, *, limit: int) -> HistoryPage:
        stream = self._streams.get(room) or _Stream()
        items = list(stream.items)
        parsed = _parse_offset(offset)
        top = self._offset(stream.seq)
        if offset is None:
            return HistoryPage([m for _, _, m in items[-limit:]], True, top)
        if parsed is None or parsed[0] != self.epoch or parsed[1] > stream.seq:
            return HistoryPage([m for _, _, m in items[:limit]], False, top)
        seq = parsed[1]
        missed = [(s, m) for s, _, m in items if s > seq]
        first_kept = missed[0][0] if missed else stream.seq + 1
        recovered = first_kept == seq + 1 and len(missed) <= limit
        return HistoryPage([m for _, m in missed[:limit]], recovered, top)

    async def current(self, room: str) -> str:
        stream = self._streams.get(room)
        return self._offset(stream.seq if stream else 0)

    async def drop(self, room: str) -> None:
        self._streams.pop(room, None)


class MemoryInbox:
    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self._streams: dict[str, _Stream] = defaultdict(_Stream)
        self._acked: dict[str, int] = {}

    async def push(self, user_id: str, message: dict[str, Any], *, size: int, ttl: float) -> str:
        stream = self._streams[user_id]
        stream.seq += 1
        offset = f"{self.epoch}:{stream.seq}"
        message["offset"] = offset
        now = time.time()
        stream.items.append((stream.seq, now, message))
        stream.trim(size, ttl, now)
        return offset

    async def fetch(self, user_id: str, since: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        stream = self._streams.get(user_id)
        if stream is None:
            return []
        stream.trim(len(stream.items), 0, time.time())
        floor = self._acked.get(user_id, 0)
        parsed = _parse_offset(since)
        if parsed is not None and parsed[0] == self.epoch:
            floor = max(floor, parsed[1])
        return [m for s, _, m in stream.items if s > floor][:limit]

    async def ack(self, user_id: str, offset: str) -> None:
        parsed = _parse_offset(offset)
        if parsed is None or parsed[0] != self.epoch:
            return
        self._acked[user_id] = max(self._acked.get(user_id, 0), parsed[1])
        stream = self._streams.get(user_id)
        if stream is not None:
            while stream.items and stream.items[0][0] <= parsed[1]:
                stream.items.popleft()


class MemoryBackend:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        epoch = secrets.token_hex(4)
        self.broker = MemoryBroker()
        self.rooms = MemoryRoomStore()
        self.presence = MemoryPresenceStore()
        self.history = MemoryHistory(epoch)
        self.inbox = MemoryInbox(epoch)

    async def start(self, deliver: Deliver) -> None:
        await self.broker.start(deliver)

    async def close(self) -> None:
        await self.broker.close()

    async def ping(self) -> bool:
        return True
