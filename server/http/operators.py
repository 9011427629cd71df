"""Operators' calls (admin): the node's counters (``GET /api/stats``), pushing a frame of any
type to users, everyone or a room (``POST /api/send``, ``/api/broadcast``), closing
connections (``/api/disconnect``, ``/api/cleanup``, ``/api/tokens/revoke``) and re-reading the
config (``POST /api/config/reload``)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import structlog
from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import FieldError
from .. import collector
from ..event_loop import Name as LoopName
from ..event_loop import name as loop_name
from ..errors import ConfigError
from ..keys import NODE, REGISTRY
from ..protocol import CloseCode
from ..reload import RELOADER
from .common import Name, TypeName, existing_room
from .errors import ApiError, HttpCode, invalid_request
from .routes import Caller, Routes

log = structlog.get_logger(__name__)
routes = Routes()


# --- stats ----------------------------------------------------------------------------------
class Stats(BaseModel):
    total_connections: int = Field(description="open connections on this node")
    unique_users: int = Field(description="users with an open connection on this node")
    online_count: int = Field(description="users online, cluster-wide")
    uptime_seconds: float
    total_rooms: int
    messages_in: int
    messages_out: int
    rooms: dict[str, int] = Field(description="members of each room")
    node: str
    event_loop: LoopName = Field(description="the event loop this node runs on "
                                 "(server.event_loop)")
    gc: dict[str, list[int] | int] = Field(description="the garbage collector of this node's "
                                           "process: threshold (of each generation), frozen "
                                           "(objects out of its sight, server.gc_freeze), "
                                           "collections (of each generation)")


@routes.get("/api/stats", summary="Counters of this node and the rooms", access="admin",
            response=Stats, tags=("operators",))
async def stats(request: web.Request) -> Stats:
    node = request.app[NODE]
    hub, counts = node.hub, node.stats
    rooms = await node.backend.rooms.list()
    return Stats(total_connections=len(hub.connections), unique_users=len(hub.by_user),
                 online_count=await node.backend.presence.online_count(),
                 uptime_seconds=round(time.time() - counts.started, 3), total_rooms=len(rooms),
                 messages_in=counts.messages_in, messages_out=counts.messages_out,
                 rooms={r.id: r.members for r in rooms}, node=node.node_id,
                 event_loop=loop_name(asyncio.get_running_loop()), gc=collector.state())


# --- pushing ---------------------------------------------------------------------------------
class SendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to_user_id: Name | None = None
    user_ids: list[Name] = Field(default_factory=list, max_length=1000)
    type: TypeName
    data: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _someone(self) -> "SendBody":
        if self.to_user_id is None and not self.user_ids:
            raise FieldError("to_user_id", "give to_user_id or user_ids")
        return self


class Sent(BaseModel):
    users: int
    delivered: int = Field(description="connections on this node that got it")


class BroadcastBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: TypeName
    data: dict[str, Any] = Field(default_factory=dict)
    room: Name | None = Field(None, description="only this room's members; everyone when absent")


class Broadcast(BaseModel):
    delivered: int = Field(description="connections on this node that got it")


@routes.post("/api/send", summary="Push a frame of any type to users (a notification is also "
             "stored unread)", access="admin", body=SendBody, response=Sent, tags=("operators",))
async def send(request: web.Request, caller: Caller, body: SendBody) -> Sent:
    node = request.app[NODE]
    users = list(dict.fromkeys(([body.to_user_id] if body.to_user_id else []) + body.user_ids))
    owner = request.app[REGISTRY].emitters.get(body.type)  # it may store the frame first
    before = node.stats.messages_out
    for user_id in users:
        try:
            if owner is not None and await owner.send_from_api(user_id, body.type, body.data):
                continue
        except ValidationError as exc:
            raise invalid_request(exc, ("data",)) from None
        await node.send_to_user(user_id, body.type, body.data)
    delivered = node.stats.messages_out - before
    log.info("api_send", type=body.type, users=len(users), delivered=delivered, by=caller.name)
    return Sent(users=len(users), delivered=delivered)


@routes.post("/api/broadcast", summary="Push a frame of any type to everyone or to a room",
             access="admin", body=BroadcastBody, response=Broadcast, errors=(404,),
             tags=("operators",))
async def broadcast(request: web.Request, caller: Caller, body: BroadcastBody) -> Broadcast:
    node = request.app[NODE]
    before = node.stats.messages_out
    if body.type == "system_message":  # kept in the room's history, like a message
        await node.system_message(body.data, room=body.room)
    elif body.room is not None:
        await existing_room(node, body.room)
        await node.send_to_room(body.room, body.type, body.data)
    else:
        await node.broadcast(body.type, body.data)
    delivered = node.stats.messages_out - before
    log.info("api_broadcast", type=body.type, room=body.room, delivered=delivered, by=caller.name)
    return Broadcast(delivered=delivered)


# --- connections and tokens ----------------------------------------------------------------
def _close_code(code: int) -> int:
    if code not in (1000, 1001, 1011, 1013) and not 3000 <= code <= 4999:
        raise ValueError("must be 1000, 1001, 1011, 1013 or 3000-4999")
    return code


def _close_reason(reason: str) -> str:
    if len(reason.encode()) > 120:
        raise ValueError("must be at most 120 bytes as UTF-8")
    return reason


class DisconnectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Name
    code: Annotated[int, AfterValidator(_close_code)] = Field(
        CloseCode.KICKED, description="close code: 1000, 1001, 1011, 1013 or 3000-4999")
    reason: Annotated[str, AfterValidator(_close_reason)] = ""


class Closed(BaseModel):
    closed: int = Field(description="connections closed on this node")


class RevokeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    jti: str = Field(min_length=1, max_length=256, description="the token's jti claim")
    exp: float | None = Field(None, allow_inf_nan=False,
                              description="the token's exp (Unix seconds): forgotten after; "
                                          "kept for ever when absent")


class Revoked(BaseModel):
    jti: str
    closed: int = Field(description="open connections made with it, closed with 4503")


@routes.post("/api/disconnect", summary="Close every connection of a user, on every node",
             access="admin", body=DisconnectBody, response=Closed, tags=("operators",))
async def disconnect(request: web.Request, caller: Caller, body: DisconnectBody) -> Closed:
    node = request.app[NODE]
    conns = [c for c in node.hub.user_connections(body.user_id) if not c.closing]
    await node.control("disconnect", user_id=body.user_id, code=body.code,
                       reason=body.reason or "disconnected by an operator")  # every node
    log.info("api_disconnect", user_id=body.user_id, code=body.code, closed=len(conns),
             by=caller.name)
    return Closed(closed=len(conns))


@routes.post("/api/cleanup", summary="Close stale connections (silent past server.pong_wait, or "
             "a write stuck past server.write_timeout) now", access="admin", response=Closed,
             tags=("operators",))
async def cleanup(request: web.Request, caller: Caller) -> Closed:
    closed = request.app[NODE].hub.reap(time.monotonic())
    log.info("api_cleanup", closed=closed, by=caller.name)
    return Closed(closed=closed)


@routes.post("/api/tokens/revoke", summary="Refuse a token id until it would expire; close the "
             "connections made with it", access="admin", body=RevokeBody, response=Revoked,
             tags=("operators",))
async def revoke(request: web.Request, caller: Caller, body: RevokeBody) -> Revoked:
    node = request.app[NODE]
    conns = [c for c in node.hub.connections.values()
             if not c.closing and c.user.claims.get("jti") == body.jti]
    await node.revoke(body.jti, body.exp)  # every node, and any started later, refuses it
    log.info("api_token_revoked", jti=body.jti, closed=len(conns), by=caller.name)
    return Revoked(jti=body.jti, closed=len(conns))


# --- config ---------------------------------------------------------------------------------
class ConfigReloaded(BaseModel):
    applied: list[str] = Field(description="options in effect now with their new value")
    restart_required: list[str] = Field(description="changed options that wait for a restart")
    warnings: list[str]


@routes.post("/api/config/reload", summary="Re-read websocket.yaml; 400 with the key-path "
             "errors, and the running config kept, when it is invalid", access="admin",
             response=ConfigReloaded, errors=(400,), tags=("operators",))
async def config_reload(request: web.Request, caller: Caller) -> ConfigReloaded:
    log.info("api_config_reload", by=caller.name)
    try:
        done = await request.app[RELOADER].reload()
    except ConfigError as exc:
        raise ApiError(400, HttpCode.INVALID_CONFIG,
                       f"{len(exc.errors)} error(s); the running config is unchanged",
                       errors=exc.errors, warnings=exc.warnings) from None
    return ConfigReloaded(applied=done.applied, restart_required=done.restart_required,
                          warnings=done.warnings)
