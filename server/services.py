"""The node: config, hub, backend and the operations plugins and the HTTP API share
(send to a connection, a user, a room or everyone; join and leave rooms)."""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

import structlog

from .auth import Authenticator
from .backends import create_backend
from .backends.base import Backend, Route, TargetKind
from .config import Config
from .connection import Connection
from .errors import MessageRejected
from .hub import Hub
from .protocol import ErrorCode, encode, frame, new_id

if TYPE_CHECKING:
    from .registry import Registry

log = structlog.get_logger(__name__)


class Stats:
    __slots__ = ("messages_in", "messages_out", "started")

    def __init__(self) -> None:
        self.messages_in = 0
        self.messages_out = 0
        self.started = time.time()


class Services:
    def __init__(self, config: Config, *, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.node_id = config.server.node_id or f"{socket.gethostname()}-{new_id()}"
        self.hub = Hub(config.server)
        self.backend: Backend = create_backend(config, self.node_id)
        self.auth = Authenticator(config.auth)
        self.stats = Stats()
        self.registry: "Registry | None" = None

    async def start(self) -> None:
        await self.backend.start(self._deliver)
        for room in self.config.rooms.default_rooms:
            await self.backend.rooms.create(room)
        self.hub.start()

    async def stop(self) -> None:
        await self.hub.stop()
        await self.backend.close()

    def _deliver(self, kind: TargetKind, key: str, payload: bytes, route: Route) -> None:
        self.stats.messages_out += self.hub.deliver(kind, key, payload, route)

    # --- sending --------------------------------------------------------------------------
    # ``exclude`` is a connection id, ``exclude_user`` a user id whose connections are skipped;
    # ``droppable`` frames are dropped for a slow client instead of closing it (typing).
    def send_to_connection(self, conn: Connection, type_: str, data: Any = None,
                           **fields: Any) -> bool:
        ok = conn.send(encode(frame(type_, data, **fields)))
        if ok:
            self.stats.messages_out += 1
        return ok

    async def send_to_user(self, user_id: str, type_: str, data: Any = None, *,
                           exclude: str | None = None, exclude_user: str | None = None,
                           droppable: bool = False, **fields: Any) -> int:
        """Publish to every connection of ``user_id``, cluster-wide. Returns the number of
        this node's connections that got it."""
        before = self.stats.messages_out
        await self.backend.broker.publish("user", user_id, encode(frame(type_, data, **fields)),
                                          Route(exclude, exclude_user, droppable))
        return self.stats.messages_out - before

    async def send_to_room(self, room: str, type_: str, data: Any = None, *,
                           exclude: str | None = None, exclude_user: str | None = None,
                           droppable: bool = False, **fields: Any) -> None:
        await self.publish_room(room, frame(type_, data, room=room, **fields), exclude=exclude,
                                exclude_user=exclude_user, droppable=droppable)

    async def publish_room(self, room: str, message: dict[str, Any], *,
                           exclude: str | None = None, exclude_user: str | None = None,
                           droppable: bool = False) -> None:
        """Publish an already built frame to a room's members, cluster-wide (encoded once)."""
        await self.backend.broker.publish("room", room, encode(message),
                                          Route(exclude, exclude_user, droppable))

    async def broadcast(self, type_: str, data: Any = None, *, exclude: str | None = None,
                        exclude_user: str | None = None, **fields: Any) -> None:
        await self.backend.broker.publish("all", "", encode(frame(type_, data, **fields)),
                                          Route(exclude, exclude_user))

    # --- rooms ----------------------------------------------------------------------------
    async def join(self, conn: Connection, room: str, *, create: bool | None = None) -> int:
        """Join ``conn`` to ``room`` with every room rule checked; returns the member count."""
        cfg = self.config.rooms
        if room in conn.rooms:
            return await self.backend.rooms.member_count(room)
        opts = cfg.options(room)
        if opts.allowed_roles and not conn.user.has_any_role(opts.allowed_roles):
            raise MessageRejected(ErrorCode.FORBIDDEN, f"your roles may not join {room!r}")
        rooms = self.backend.rooms
        info = await rooms.get(room)
        if info is None:
            allowed = cfg.allow_client_create if create is None else create
            if not allowed:
                raise MessageRejected(ErrorCode.NOT_FOUND, f"room {room!r} does not exist")
            if await rooms.count() >= cfg.max_rooms:
                raise MessageRejected(ErrorCode.ROOM_LIMIT_REACHED,
                                      f"the server holds its maximum of {cfg.max_rooms} rooms")
            info, _ = await rooms.create(room)
        mine = await rooms.user_rooms(conn.user.id)
        if room not in mine and len(mine) >= cfg.max_rooms_per_user:
            raise MessageRejected(ErrorCode.ROOM_LIMIT_REACHED,
                                  f"you are in {len(mine)} rooms, the most allowed")
        cap = info.max_members or opts.max_members
        if room not in mine and await rooms.member_count(room) >= cap:
            raise MessageRejected(ErrorCode.ROOM_FULL, f"room {room!r} has its maximum of {cap} members")
        count = await rooms.add_member(room, conn.user.id, conn.id)
        self.hub.subscribe(room, conn)
        if room not in mine and opts.join_leave_events:
            await self.send_to_room(room, "user_joined", {"room": room, "user": conn.user.public(),
                                                          "members_count": count}, exclude=conn.id)
        return count

    async def leave(self, conn: Connection, room: str, *, closing: bool = False) -> int:
        """Leave ``room``; ``user_left`` goes to the others when the user's last connection in
        the room left."""
        if not closing and room not in conn.rooms:
            raise MessageRejected(ErrorCode.NOT_IN_ROOM, f"you are not in room {room!r}")
        self.hub.unsubscribe(room, conn)
        count, gone = await self.backend.rooms.remove_member(room, conn.user.id, conn.id)
        if gone and self.config.rooms.options(room).join_leave_events:
            await self.send_to_room(room, "user_left", {"room": room, "user": conn.user.public(),
                                                        "members_count": count}, exclude=conn.id)
        return count
