"""The node: config, hub, backend and the operations plugins and the HTTP API share
(send to a connection, a user, a room or everyone; join, leave and delete rooms; post room,
private and system messages; history, inbox, presence and the plugins' stores).

:class:`Node` implements the plugin API's ``NodeAPI``: that Protocol is all a plugin sees of it."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

import orjson
import structlog

from .auth import Authenticator
from .backends import create_backend
from .backends.base import (Backend, Channels, ConversationEntry, HistoryPage, Route, Store,
                            TargetKind, pair_key)
from .config import Config, RoomOptions
from .connection import Connection
from .errors import MessageRejected
from .hub import Hub
from .identity import User
from .rooms import OptionsCache, check_name
from .metrics import Metrics
from .protocol import CloseCode, ErrorCode, encode, frame, new_id

if TYPE_CHECKING:
    from .plugin_api import Connection as ConnectionView
    from .plugin_api import NodeAPI, Plugin

log = structlog.get_logger(__name__)

#: the store namespace of the core's own keys (no plugin may be named ``core``)
CORE = "core"
#: most revoked token ids kept in the backend (each until its exp)
REVOKED_KEPT = 100_000


def _socket(conn: ConnectionView) -> Connection:
    """The core's connection behind what a plugin holds (plugins see the Protocol only)."""
    return cast(Connection, conn)


class Stats:
    __slots__ = ("messages_in", "messages_out", "started")

    def __init__(self) -> None:
        self.messages_in = 0
        self.messages_out = 0
        self.started = time.time()


class Node:
    def __init__(self, config: Config, *, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.node_id = config.server.node_id or f"{socket.gethostname()}-{new_id()}"
        self.hub = Hub(config.server)
        self.backend: Backend = create_backend(config, self.node_id)
        self.auth = Authenticator(config.auth)
        self.stats = Stats()
        self.metrics = Metrics()
        #: the enabled plugins, in config order (set by the app; a reload replaces them)
        self.plugins: Sequence["Plugin[Any]"] = ()
        self._tasks: set[asyncio.Task[None]] = set()  # work started from a sync callback
        #: the broker channels this node is subscribed to; changed under the lock only
        self._channels = Channels()
        self._channels_lock = asyncio.Lock()
        self._down_logged = 0.0
        #: control operation -> what this node does when one arrives (``control``)
        self.control_ops: dict[str, Callable[[dict[str, Any]], None]] = {
            "room_deleted": self._room_deleted, "disconnect": self._disconnect,
            "revoke": self._revoke}
        self._room_options = OptionsCache()

    async def start(self) -> None:
        self.backend.history.on_expired(self._history_expired)
        await self.backend.start(self._deliver)
        await self._want("all", "")
        await self._want("control", "")
        now = time.time()
        for _, (jti, exp) in await self.backend.store(CORE).stream_read("revoked", limit=REVOKED_KEPT):
            if exp is None or exp > now:  # revoked on another node, or before a restart
                self.auth.revocations.revoke(jti, exp)
        for room in self.config.rooms.default_rooms:
            await self.backend.rooms.create(room)
        self.hub.start()

    async def stop(self) -> None:
        await self.hub.stop()
        await self.backend.close()

    def _deliver(self, kind: TargetKind, key: str, payload: bytes, route: Route) -> None:
        if kind == "control":
            self._apply_control(payload)
            return
        started = time.perf_counter()
        sent = self.hub.deliver(kind, key, payload, route)
        self.stats.messages_out += sent
        self.metrics.delivered(payload, sent, time.perf_counter() - started)

    @property
    def presence(self) -> Any:
        """The backend's presence store (``plugin_api.PresenceView`` for plugins)."""
        return self.backend.presence

    @property
    def echo_to_sender(self) -> bool:
        return self.config.messages.echo_to_sender

    def permitted(self, user: User, action: str) -> bool:
        roles = getattr(self.config.permissions, action, None)
        if not isinstance(roles, list):
            raise ValueError(f"permissions.{action}: no such permission")
        return user.has_any_role(roles)

    def store(self, namespace: str) -> Store:
        return self.backend.store(namespace)

    def replay_fit(self, frames: list[dict[str, Any]]) -> int:
        """How many of ``frames``, from the first, fit in half of a connection's outbound
        queue (``server.write_buffer_size`` bytes, ``server.max_queued_messages`` frames) once
        encoded; at least one when there is one."""
        server = self.config.server
        max_bytes, max_count = server.write_buffer_size // 2, max(server.max_queued_messages // 2, 1)
        used = 0
        for n, message in enumerate(frames[:max_count]):
            used += len(encode(message))
            if used > max_bytes and n:
                return n
        return min(len(frames), max_count)

    def _history_expired(self, room: str) -> None:
        if self.plugins:
            task = asyncio.get_running_loop().create_task(self._room_hook("on_history_expired", room))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def backend_down(self, exc: BaseException) -> None:
        """Note that the backend could not be reached: logged at most every 5 s, not per frame."""
        now = time.monotonic()
        if now - self._down_logged > 5.0:
            self._down_logged = now
            log.warning("backend_unavailable", error=str(exc) or type(exc).__name__)

    # --- channels: subscribed while this node has a connection that needs them ---------------
    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _want(self, kind: TargetKind, key: str) -> None:
        async with self._channels_lock:
            if not self._channels.has(kind, key):
                await self.backend.broker.subscribe(kind, key)
                self._channels.add(kind, key)

    async def _release(self, kind: TargetKind, key: str) -> None:
        """Unsubscribe unless a local connection needs the channel again (checked under the
        lock, so a join racing the last leave keeps its subscription)."""
        async with self._channels_lock:
            local = self.hub.by_room if kind == "room" else self.hub.by_user
            if self._channels.has(kind, key) and key not in local:
                self._channels.discard(kind, key)
                await self.backend.broker.unsubscribe(kind, key)

    async def attach(self, conn: Connection) -> None:
        """A connection opens on this node: it receives its user's frames from now on."""
        self.hub.add(conn)
        await self._want("user", conn.user.id)

    async def detach(self, conn: Connection) -> None:
        self.hub.remove(conn)
        await self._release("user", conn.user.id)
        for room in conn.rooms:
            await self._release("room", room)

    # --- control: operations every node applies to its own connections ---------------------
    async def control(self, op: str, **data: Any) -> None:
        """Have every node (this one first) apply ``op`` (``control_ops``) with ``data``."""
        await self.backend.broker.publish("control", "", encode({"op": op, "origin": self.node_id,
                                                                 **data}))

    def _apply_control(self, payload: bytes) -> None:
        message = orjson.loads(payload)
        action = self.control_ops.get(message.get("op"))
        if action is None:
            log.warning("control_unknown", op=message.get("op"))
            return
        try:
            action(message)
        except Exception:
            log.exception("control_failed", op=message.get("op"))

    def _room_deleted(self, message: dict[str, Any]) -> None:
        room = message["room"]
        for conn in tuple(self.hub.by_room.get(room, {}).values()):
            self.hub.unsubscribe(room, conn)
            self.send_to_connection(conn, "left", {"room": room, "members_count": 0,
                                                   "reason": "deleted"}, room=room)
        self._spawn(self._release("room", room))

    def _disconnect(self, message: dict[str, Any]) -> None:
        for conn in self.hub.user_connections(message["user_id"]):
            if not conn.closing:
                conn.close(message["code"], message["reason"])

    async def revoke(self, jti: str, exp: float | None) -> None:
        """Refuse token ``jti`` everywhere from now on (until ``exp``), kept in the backend so a
        node that starts later refuses it too, and close the connections made with it."""
        ttl = max(exp - time.time(), 1.0) if exp is not None else 0.0
        await self.backend.store(CORE).stream_add("revoked", [jti, exp], maxlen=REVOKED_KEPT, ttl=ttl)
        await self.control("revoke", jti=jti, exp=exp)

    def _revoke(self, message: dict[str, Any]) -> None:
        self.auth.revocations.revoke(message["jti"], message.get("exp"))
        for conn in tuple(self.hub.connections.values()):
            if not conn.closing and conn.user.claims.get("jti") == message["jti"]:
                conn.close(CloseCode.KICKED, "token revoked")

    async def _room_hook(self, hook: str, room: str) -> None:
        for plugin in self.plugins:
            try:
                await getattr(plugin, hook)(room)
            except Exception:
                log.exception("plugin_hook_failed", plugin=plugin.name, hook=hook, room=room)

    def room_options(self, room: str) -> RoomOptions:
        """``config.rooms.options(room)``, worked out once per room while the config stays."""
        return self._room_options.get(self.config.rooms, room)

    # --- sending --------------------------------------------------------------------------
    # ``exclude`` is a connection id, ``exclude_user`` a user id whose connections are skipped;
    # ``droppable`` frames are dropped for a slow client instead of closing it (typing).
    def send_to_connection(self, conn: ConnectionView, type_: str, data: Any = None,
                           **fields: Any) -> bool:
        return self.send_frame(conn, frame(type_, data, **fields))

    def send_frame(self, conn: ConnectionView, message: dict[str, Any]) -> bool:
        """Queue an already built frame on one connection."""
        ok = _socket(conn).send(encode(message))
        if ok:
            self.stats.messages_out += 1
            self.metrics.sent(message["type"])
        return ok

    async def send_to_user(self, user_id: str, type_: str, data: Any = None, *,
                           exclude: str | None = None, exclude_user: str | None = None,
                           droppable: bool = False, **fields: Any) -> None:
        """Publish to every connection of ``user_id``, cluster-wide."""
        await self.backend.broker.publish("user", user_id, encode(frame(type_, data, **fields)),
                                          Route(exclude, exclude_user, droppable))

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
                        exclude_user: str | None = None, **fields: Any) -> dict[str, Any]:
        """Publish to every connection, cluster-wide; returns the frame."""
        message = frame(type_, data, **fields)
        await self.backend.broker.publish("all", "", encode(message), Route(exclude, exclude_user))
        return message

    # --- rooms ----------------------------------------------------------------------------
    async def join(self, conn: ConnectionView, room: str, *, create: bool | None = None) -> int:
        """Join ``conn`` to ``room`` with every room rule checked; returns the member count."""
        cfg = self.config.rooms
        if room in conn.rooms:
            return await self.backend.rooms.member_count(room)
        check_name("room", room)
        opts = self.room_options(room)
        if opts.allowed_roles and not conn.user.has_any_role(opts.allowed_roles):
            raise MessageRejected(ErrorCode.FORBIDDEN, f"your roles may not join {room!r}")
        rooms = self.backend.rooms
        mine = await rooms.user_rooms(conn.user.id)
        if room not in mine and len(mine) >= cfg.max_rooms_per_user:
            raise MessageRejected(ErrorCode.ROOM_LIMIT_REACHED,
                                  f"you are in {len(mine)} rooms, the most allowed")
        info = await rooms.get(room)
        if info is None:
            allowed = cfg.allow_client_create if create is None else create
            if not allowed:
                raise MessageRejected(ErrorCode.NOT_FOUND, f"room {room!r} does not exist")
            if await rooms.count() >= cfg.max_rooms:
                raise MessageRejected(ErrorCode.ROOM_LIMIT_REACHED,
                                      f"the server holds its maximum of {cfg.max_rooms} rooms")
            # a room a client creates lasts while it has members (RoomInfo.persistent)
            info, created = await rooms.create(room, persistent=False)
            if created:
                await self._room_hook("on_room_created", room)
        cap = info.max_members or opts.max_members
        if room not in mine and await rooms.member_count(room) >= cap:
            raise MessageRejected(ErrorCode.ROOM_FULL, f"room {room!r} has its maximum of {cap} members")
        count = await rooms.add_member(room, conn.user.id, conn.id)
        self.hub.subscribe(room, _socket(conn))
        await self._want("room", room)
        # a room past rooms.announce_max_members is not told (an O(members) fan-out per join)
        if room not in mine and opts.join_leave_events and opts.announces(count):
            await self.send_to_room(room, "user_joined", {"room": room, "user": conn.user.public(),
                                                          "members_count": count}, exclude=conn.id)
        return count

    async def leave(self, conn: ConnectionView, room: str, *, closing: bool = False) -> int:
        """Leave ``room``; ``user_left`` goes to the others when the user's last connection in
        the room left, unless the room, with that user, had more than
        ``rooms.announce_max_members``."""
        if not closing and room not in conn.rooms:
            raise MessageRejected(ErrorCode.NOT_IN_ROOM, f"you are not in room {room!r}")
        self.hub.unsubscribe(room, _socket(conn))
        await self._release("room", room)
        count, gone = await self.backend.rooms.remove_member(room, conn.user.id, conn.id)
        opts = self.room_options(room)
        if gone and opts.join_leave_events and opts.announces(count + 1):
            await self.send_to_room(room, "user_left", {"room": room, "user": conn.user.public(),
                                                        "members_count": count}, exclude=conn.id)
        return count

    async def delete_room(self, room: str) -> bool:
        """Delete ``room`` and its history; its members, on every node, get ``left`` with
        ``reason: deleted``. False when there was no such room."""
        if not await self.backend.rooms.delete(room):
            return False
        await self.backend.history.drop(room)
        await self.control("room_deleted", room=room)  # every node's members get left
        log.info("room_deleted", room=room)
        await self._room_hook("on_room_deleted", room)
        return True

    async def create_room(self, room: str, **fields: Any) -> tuple[Any, bool]:
        """Create ``room`` (an operator's: it persists) unless it exists; (info, created)."""
        info, created = await self.backend.rooms.create(room, **fields)
        if created:
            await self._room_hook("on_room_created", room)
        return info, created

    # --- reading ----------------------------------------------------------------------------
    async def history(self, room: str, since: str | None, *, limit: int) -> HistoryPage:
        return await self.backend.history.since(room, since, limit=limit)

    async def history_top(self, room: str) -> str:
        return await self.backend.history.current(room)

    async def room_message(self, room: str, message_id: str) -> dict[str, Any] | None:
        """The kept message of ``room`` whose ``id`` is ``message_id``; None when it is not
        (or no longer) kept."""
        page = await self.backend.history.since(room, None, limit=max(self.room_options(room).history_size, 1))
        return next((m for m in reversed(page.messages) if m.get("id") == message_id), None)

    async def inbox(self, user_id: str, since: str | None = None, *,
                    limit: int) -> list[dict[str, Any]]:
        return await self.backend.inbox.fetch(user_id, since, limit=limit)

    async def inbox_ack(self, user_id: str, offset: str) -> None:
        await self.backend.inbox.ack(user_id, offset)

    async def conversation(self, user_id: str, peer: str, since: str | None, *,
                           limit: int) -> HistoryPage:
        check_name("to", peer)
        return await self.backend.conversations.history.since(pair_key(user_id, peer), since,
                                                              limit=limit)

    async def conversations(self, user_id: str, *, limit: int) -> list[ConversationEntry]:
        """``user_id``'s private conversations, the most recent first."""
        return await self.backend.conversations.recent(
            user_id, limit=limit, ttl=self.config.conversations.history_ttl)

    async def room_members(self, room: str) -> list[str]:
        return await self.backend.rooms.members(room)

    async def room_member_count(self, room: str) -> int:
        return await self.backend.rooms.member_count(room)

    async def user_rooms(self, user_id: str) -> set[str]:
        return await self.backend.rooms.user_rooms(user_id)

    # --- messages -------------------------------------------------------------------------
    # The rules of who may send what (membership, client_publish, roles) are the caller's: the
    # chat plugin for frames, the HTTP API for its calls. ``exclude`` is the sending connection
    # (it gets an ack instead of a copy); with ``messages.echo_to_sender`` off, none of the
    # sender's connections gets a copy.
    async def post_to_room(self, room: str, type_: str, data: Any, *,
                           sender: dict[str, Any] | None = None,
                           exclude: str | None = None) -> dict[str, Any]:
        """Keep a frame in ``room``'s history (which gives it its ``offset``) and publish it to
        the room's members. Returns the frame."""
        opts = self.room_options(room)
        message = frame(type_, data, room=room, sender=sender)
        no_echo = sender is not None and not self.config.messages.echo_to_sender
        await self.backend.broker.publish_kept(
            room, message, size=opts.history_size, ttl=opts.history_ttl,
            route=Route(exclude, sender["id"] if sender and no_echo else None))
        return message

    async def send_private(self, to: str, data: Any, *, sender: dict[str, Any],
                           inbox_size: int, inbox_ttl: float,
                           exclude: str | None = None) -> dict[str, Any]:
        """A private ``message`` to every connection of user ``to``, with a copy to the sender's
        other connections. When ``to`` has no open connection anywhere it waits in their inbox
        (the newest ``inbox_size`` for ``inbox_ttl`` seconds: the chat plugin's ``inbox``
        section) instead. The frame is kept in the pair's conversation (``conversations``
        section), whose ``offset`` it carries (a copy in the inbox carries the inbox's)."""
        check_name("to", to)
        message = frame("message", data, to=to, sender=sender)
        cfg = self.config.conversations
        await self.backend.conversations.append(sender["id"], to, message, size=cfg.history_size,
                                                ttl=cfg.history_ttl, keep=cfg.max_per_user)
        payload = encode(message)
        broker = self.backend.broker
        if to == sender["id"]:  # a note to oneself: to each of the other connections
            await broker.publish("user", to, payload, Route(exclude))
            return message
        if await self.backend.presence.connections(to):
            await broker.publish("user", to, payload)
        else:  # a copy with an offset of the inbox's
            await self.backend.inbox.push(to, dict(message), size=inbox_size, ttl=inbox_ttl)
        if self.config.messages.echo_to_sender:
            await broker.publish("user", sender["id"], payload, Route(exclude))
        return message

    async def system_message(self, data: Any, *, room: str | None = None) -> dict[str, Any]:
        """An operators' ``system_message`` with ``data`` as given and no ``from``: to every
        connection, or to the members of ``room`` (``NOT_FOUND`` when it does not exist), where
        it is kept in the history like a message, so members catching up with ``since`` get it.
        Returns the frame."""
        if room is None:
            return await self.broadcast("system_message", data)
        if await self.backend.rooms.get(room) is None:
            raise MessageRejected(ErrorCode.NOT_FOUND, f"room {room!r} does not exist")
        return await self.post_to_room(room, "system_message", data)


if TYPE_CHECKING:  # Node implements the plugin API's facade
    def _implements(node: Node) -> NodeAPI:
        return node
