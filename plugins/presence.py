"""Presence: the status a user sets (``presence``), the presence of users by id
(``presence.query``) and ``user_status`` online/offline when a user's first connection opens
or their last one closes.

Who hears about a user: the users who share a room with them, counting only rooms whose
``presence`` option is on (``rooms.namespaces.<ns>.presence: false`` leaves a namespace out)
and that have at most ``rooms.announce_max_members`` members (a big room's members ask with
``presence.query``), one frame per user however many rooms they share. Going offline waits
``presence.grace_period`` (one timer per user, cancelled by a reconnect), so a page reload
announces nothing. State lives in the backend's PresenceStore; this node holds only the timers.
docs/protocol.md ("Presence") is the client's view.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from server.plugin_api import (BaseModel, ConfigDict, Context, ErrorCode, Field, MessageRejected,
                               NodeAPI, Plugin, PluginConfig, User, handles)

Status = Literal["online", "away", "busy", "offline"]
#: names a status's extra fields may not take: presence.state puts them beside these
RESERVED = frozenset({"user_id", "online", "last_seen", "connections"})


class PresenceConfig(PluginConfig):
    """The ``presence`` section of websocket.yaml (docs/configuration.md)."""

    # unknown keys are the config loader's warnings, as for the core's sections
    model_config = ConfigDict(extra="ignore")
    enabled: bool = True
    grace_period: float = Field(5.0, ge=0, allow_inf_nan=False)
    last_seen_ttl: float = Field(604800.0, gt=0, allow_inf_nan=False)
    max_extra_bytes: int = Field(512, gt=0)
    max_query_users: int = Field(100, gt=0)


class PresenceData(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Status = Field(description="online, away, busy or offline; other fields (device, ...) "
                           "travel with it, up to presence.max_extra_bytes")


class QueryData(BaseModel):
    model_config = ConfigDict(extra="ignore")
    user_ids: list[str] = Field(description="the users to look up, at most presence.max_query_users")


class PresenceEvent(BaseModel):
    """A room-mate (or your own other connection) set a status; extra fields as they sent them."""

    model_config = ConfigDict(extra="allow")
    user_id: str
    status: Status


class UserState(BaseModel):
    model_config = ConfigDict(extra="allow")
    user_id: str
    online: bool
    status: Status
    last_seen: float | None
    connections: int


class PresenceState(BaseModel):
    """Answers presence.query: one entry per distinct id asked, in order."""

    users: list[UserState]


class UserStatus(BaseModel):
    """A room-mate's first connection opened, or their last one closed presence.grace_period ago."""

    user_id: str
    status: Literal["online", "offline"]
    last_seen: float | None


@dataclass
class _Departure:
    """A user whose last connection on this node closed: offline when the grace period ends,
    announced to the room-mates of the rooms those connections were in."""

    user: User
    rooms: set[str]
    task: asyncio.Task[None] | None = None


class PresencePlugin(Plugin[PresenceConfig]):
    name = "presence"
    Config = PresenceConfig
    section = "presence"
    emits = {"presence": PresenceEvent, "presence.state": PresenceState, "user_status": UserStatus}

    def __init__(self, config: PresenceConfig, node: NodeAPI) -> None:
        super().__init__(config, node)
        self._departures: dict[str, _Departure] = {}

    async def on_startup(self) -> None:
        self.node.presence.set_last_seen_ttl(self.config.last_seen_ttl)

    def client_settings(self) -> dict[str, Any]:
        return {"enabled": self.config.enabled, "grace_period": self.config.grace_period}

    # --- client frames ----------------------------------------------------------------------
    @handles("presence", schema=PresenceData,
             description="set your status; the users sharing a room with you get a presence event")
    async def presence(self, ctx: Context[PresenceConfig], data: PresenceData) -> None:
        settings = self.config
        if not settings.enabled:
            raise MessageRejected(ErrorCode.FORBIDDEN, "presence is turned off on this server")
        extra = data.model_extra or {}
        reserved = sorted(RESERVED & extra.keys())
        if reserved:
            raise MessageRejected(ErrorCode.INVALID_MESSAGE,
                                  f"data.{reserved[0]}: is reserved, not a status field")
        size = len(json.dumps(extra, separators=(",", ":"), ensure_ascii=False).encode())
        if extra and size > settings.max_extra_bytes:
            raise MessageRejected(ErrorCode.INVALID_MESSAGE,
                                  f"data: the extra status fields take {size} bytes, more than "
                                  f"presence.max_extra_bytes ({settings.max_extra_bytes})")
        user = ctx.user
        status = {"status": data.status, **extra}
        await self.node.presence.set_status(user.id, status)
        event = {"user_id": user.id, **status}
        rooms = await self.node.user_rooms(user.id)
        await self._tell(await self._room_mates(user.id, rooms), "presence", event, user)
        await ctx.send_to_user(user.id, "presence", event, exclude_self=True)
        await ctx.ack()

    @handles("presence.query", schema=QueryData,
             description="the presence of users by id: online, status, last_seen, connections")
    async def query(self, ctx: Context[PresenceConfig], data: QueryData) -> None:
        limit = self.config.max_query_users
        if len(data.user_ids) > limit:
            raise MessageRejected(ErrorCode.INVALID_MESSAGE,
                                  f"data.user_ids: at most {limit} ids (presence.max_query_users), "
                                  f"got {len(data.user_ids)}")
        users = await self.node.presence.snapshot(list(dict.fromkeys(data.user_ids)))
        await ctx.reply("presence.state", {"users": [u.public() for u in users]})

    # --- online / offline -------------------------------------------------------------------
    async def on_connect(self, ctx: Context[PresenceConfig]) -> None:
        user = ctx.user
        departure = self._departures.pop(user.id, None)
        if departure is not None and departure.task is not None:
            departure.task.cancel()  # back within the grace period
        if not self.config.enabled:
            return
        store = self.node.presence
        if await store.mark_online(user.id):
            rooms = await self.node.user_rooms(user.id)
            if rooms:  # in no room, no one to tell
                await self._announce(user, "online", rooms, await store.last_seen(user.id))

    async def on_disconnect(self, ctx: Context[PresenceConfig]) -> None:
        user = ctx.user
        if not self.config.enabled:
            return
        if await self.node.presence.connections(user.id):
            return  # another connection is still open
        departure = self._departures.get(user.id)
        if departure is not None:  # two connections closed at once: one timer for both
            departure.rooms |= ctx.conn.rooms
            return
        departure = self._departures[user.id] = _Departure(user, set(ctx.conn.rooms))
        departure.task = asyncio.get_running_loop().create_task(
            self._depart(user.id, self.config.grace_period))

    async def _depart(self, user_id: str, grace: float) -> None:
        await asyncio.sleep(grace)
        departure = self._departures.pop(user_id)  # a reconnect can no longer cancel this
        try:
            last_seen = await self.node.presence.mark_offline(user_id)
            if last_seen is not None:
                await self._announce(departure.user, "offline", departure.rooms, last_seen)
        except Exception:
            self.log.exception("presence_offline_failed", user_id=user_id)

    async def on_shutdown(self) -> None:
        tasks = [d.task for d in self._departures.values() if d.task is not None]
        self._departures.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- fan-out ----------------------------------------------------------------------------
    async def _announce(self, user: User, status: str, rooms: Iterable[str],
                        last_seen: float | None) -> None:
        mates = await self._room_mates(user.id, rooms)
        await self._tell(mates, "user_status",
                         {"user_id": user.id, "status": status, "last_seen": last_seen}, user)
        self.log.debug("user_status", user_id=user.id, status=status, told=len(mates))

    async def _room_mates(self, user_id: str, rooms: Iterable[str]) -> set[str]:
        """The users sharing one of ``rooms`` with ``user_id``, in rooms with presence on and
        small enough to be told (``rooms.announce_max_members``, counting ``user_id`` whether
        still in the room or not). A bigger room costs one member count, never a listing."""
        node = self.node
        mates: set[str] = set()
        for room in rooms:
            opts = node.room_options(room)
            if not opts.presence or not opts.announces(await node.room_member_count(room)):
                continue
            members = set(await node.room_members(room))  # at most announce_max_members
            members.add(user_id)
            if opts.announces(len(members)):
                mates |= members
        mates.discard(user_id)
        return mates

    async def _tell(self, users: set[str], type_: str, data: dict[str, Any], sender: User) -> None:
        """One frame to every connection of each of ``users`` (never twice to one user)."""
        for user_id in users:
            await self.node.send_to_user(user_id, type_, data, sender=sender.public())
