"""This node's connections: by id, by user and by room. Fan-out only enqueues.

One sweeper task per node (not a timer per connection) sends heartbeats, closes connections
whose peer stopped answering (4010) or whose pending write outlived ``write_timeout`` (4008),
and those whose token expired (4001) within a tick of it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Iterable

import structlog

from .backends.base import DEFAULT_ROUTE, Route, TargetKind
from .config import ServerConfig
from .connection import NO_ROOMS, Connection
from .protocol import CloseCode, text_frame

log = structlog.get_logger(__name__)


class Hub:
    def __init__(self, server: ServerConfig) -> None:
        self.server = server
        self.connections: dict[str, Connection] = {}
        self.by_user: dict[str, dict[str, Connection]] = {}
        self.by_room: dict[str, dict[str, Connection]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.draining = False

    # --- membership ---------------------------------------------------------------------
    def add(self, conn: Connection) -> None:
        self.connections[conn.id] = conn
        self.by_user.setdefault(conn.user.id, {})[conn.id] = conn

    def remove(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is None:
            return
        user_conns = self.by_user.get(conn.user.id)
        if user_conns is not None:
            user_conns.pop(conn.id, None)
            if not user_conns:
                del self.by_user[conn.user.id]
        for room in conn.rooms:
            self._unsubscribe(room, conn)

    def subscribe(self, room: str, conn: Connection) -> None:
        rooms = conn.rooms
        if not isinstance(rooms, set):  # the shared empty one (NO_ROOMS)
            rooms = conn.rooms = set()
        rooms.add(room)
        self.by_room.setdefault(room, {})[conn.id] = conn

    def unsubscribe(self, room: str, conn: Connection) -> None:
        rooms = conn.rooms
        if isinstance(rooms, set):
            rooms.discard(room)
            if not rooms:
                conn.rooms = NO_ROOMS
        self._unsubscribe(room, conn)

    def _unsubscribe(self, room: str, conn: Connection) -> None:
        members = self.by_room.get(room)
        if members is not None:
            members.pop(conn.id, None)
            if not members:
                del self.by_room[room]

    def user_connections(self, user_id: str) -> list[Connection]:
        return list(self.by_user.get(user_id, {}).values())

    def count_user(self, user_id: str) -> int:
        return len(self.by_user.get(user_id, ()))

    # --- fan-out ------------------------------------------------------------------------
    def deliver(self, kind: TargetKind, key: str, payload: bytes, route: Route = DEFAULT_ROUTE) -> int:
        """Enqueue ``payload`` (already encoded, once) on every local target connection."""
        if kind == "room":
            targets: Iterable[Connection] = self.by_room.get(key, {}).values()
        elif kind == "user":
            targets = self.by_user.get(key, {}).values()
        else:
            targets = self.connections.values()
        exclude, exclude_user, droppable = route.exclude, route.exclude_user, route.droppable
        framed = text_frame(payload)  # the WebSocket frame too is built once for everyone
        sent = 0
        for conn in tuple(targets):
            if conn.id == exclude or (exclude_user is not None and conn.user.id == exclude_user):
                continue
            if conn.send(payload, droppable=droppable, framed=framed):
                sent += 1
        return sent

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass

    def close_all(self, code: int, reason: str) -> None:
        for conn in tuple(self.connections.values()):
            conn.close(code, reason)

    def reap(self, now: float, wall: float | None = None) -> int:
        """Close the connections whose pending write outlived ``write_timeout`` (4008), whose
        peer has been silent past ``pong_wait`` (4010) and, given ``wall`` (Unix seconds),
        whose token expired by then (4001); returns how many. The sweeper calls it each tick
        with ``wall`` (one pass over the connections for all three), ``POST /api/cleanup`` at
        once without."""
        cfg = self.server
        closed = 0
        for conn in tuple(self.connections.values()):
            if conn.closing:
                continue
            due = conn.expiry_due
            if conn.write_started and now - conn.write_started > cfg.write_timeout:
                conn.close(CloseCode.SLOW_CONSUMER, "slow consumer: write timed out")
            elif now - conn.last_activity > cfg.pong_wait:
                conn.close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
            elif wall is not None and due is not None and due <= wall:
                conn.close(CloseCode.TOKEN_EXPIRED, "token expired")
            else:
                continue
            closed += 1
        return closed

    async def _sweep(self) -> None:
        cfg = self.server
        tick = max(0.02, min(1.0, cfg.ping_period / 2, cfg.write_timeout / 2))
        last_ping = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            self.reap(now, time.time())
            if now - last_ping >= cfg.ping_period:
                last_ping = now
                for conn in tuple(self.connections.values()):
                    if not conn.closing:
                        conn.ping()
