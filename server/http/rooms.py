"""Rooms: list, read, create and delete them (``/api/rooms``, ``/api/rooms/{id}``), their
members and history, and joining or leaving them with every open connection of the bearer
(``/api/rooms/{id}/join``, ``/leave``: each connection goes through the frame path's
:func:`~server.frames.dispatch`, as if it had sent the frame)."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ..backends.base import RoomInfo
from ..frames import dispatch
from ..identity import User
from ..keys import NODE, REGISTRY
from ..node import Node
from ..protocol import Envelope, ErrorCode
from .common import Name, Page, SinceQuery, existing_room, page_limit
from .errors import ApiError, HttpCode, not_found
from .routes import Caller, Routes

log = structlog.get_logger(__name__)
routes = Routes()


class Room(BaseModel):
    id: str
    name: str
    description: str
    members: int = Field(description="users in the room")
    messages: int = Field(description="messages its history holds now")
    created_at: float = Field(description="Unix seconds")
    max_members: int


class RoomList(BaseModel):
    total: int
    rooms: list[Room]


class RoomCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Name
    name: str = Field("", max_length=200, description="display name; the id when empty")
    description: str = Field("", max_length=2000)
    max_members: int | None = Field(None, ge=1, le=10_000_000,
                                    description="member cap; rooms.max_members when absent")


class RoomDeleted(BaseModel):
    id: str
    connections: int = Field(description="this node's connections that were in it (they got left)")


class Member(BaseModel):
    user_id: str
    username: str | None
    online: bool


class Members(BaseModel):
    room: str
    total: int
    members: list[Member]


class RoomHistory(BaseModel):
    room: str
    messages: list[dict[str, Any]]
    recovered: bool = Field(description="false when messages after `since` are gone")
    offset: str = Field(description="the room's latest offset")


class Membership(BaseModel):
    room: str
    connections: int = Field(description="the user's connections on this node that joined/left")
    members_count: int


async def _room(node: Node, info: RoomInfo) -> Room:
    opts = node.config.rooms.options(info.id)
    held = await node.backend.history.since(info.id, None, limit=max(opts.history_size, 1))
    return Room(id=info.id, name=info.name, description=info.description, members=info.members,
                messages=len(held.messages), created_at=info.created_at,
                max_members=info.max_members or opts.max_members)


@routes.get("/api/rooms", summary="Rooms, by id", access="user", query=Page, response=RoomList,
            tags=("rooms",))
async def rooms_list(request: web.Request, query: Page) -> RoomList:
    node = request.app[NODE]
    rooms = sorted(await node.backend.rooms.list(), key=lambda r: r.id)
    page = rooms[query.offset:query.offset + page_limit(node, query.limit)]
    return RoomList(total=len(rooms), rooms=[await _room(node, info) for info in page])


@routes.get("/api/rooms/{id}", summary="One room", access="user", response=Room, errors=(404,),
            tags=("rooms",))
async def room_get(request: web.Request) -> Room:
    node = request.app[NODE]
    return await _room(node, await existing_room(node, request.match_info["id"]))


@routes.post("/api/rooms", summary="Create a room (it lasts until deleted)", access="admin",
             body=RoomCreate, response=Room, status=201, errors=(409,), tags=("rooms",))
async def room_create(request: web.Request, caller: Caller, body: RoomCreate) -> Room:
    node = request.app[NODE]
    rooms, cap = node.backend.rooms, node.config.rooms.max_rooms
    if await rooms.get(body.id) is not None:
        raise ApiError(409, HttpCode.ROOM_EXISTS, f"room {body.id!r} exists already")
    if await rooms.count() >= cap:
        raise ApiError(409, ErrorCode.ROOM_LIMIT_REACHED,
                       f"the server holds its maximum of {cap} rooms")
    info, created = await node.create_room(body.id, name=body.name, description=body.description,
                                           max_members=body.max_members)
    if not created:
        raise ApiError(409, HttpCode.ROOM_EXISTS, f"room {body.id!r} exists already")
    log.info("api_room_created", room=body.id, by=caller.name)
    return await _room(node, info)


@routes.delete("/api/rooms/{id}", summary="Delete a room and its history; members get left",
               access="admin", response=RoomDeleted, errors=(404,), tags=("rooms",))
async def room_delete(request: web.Request, caller: Caller) -> RoomDeleted:
    node = request.app[NODE]
    room = request.match_info["id"]
    connections = len(node.hub.by_room.get(room, ()))
    if not await node.delete_room(room):
        raise not_found(f"room {room!r}")
    log.info("api_room_deleted", room=room, by=caller.name)
    return RoomDeleted(id=room, connections=connections)


@routes.get("/api/rooms/{id}/members", summary="A room's members, by user id", access="user",
            query=Page, response=Members, errors=(404,), tags=("rooms",))
async def room_members(request: web.Request, query: Page) -> Members:
    node = request.app[NODE]
    room = (await existing_room(node, request.match_info["id"])).id
    ids: list[str] = sorted(await node.backend.rooms.members(room))
    page = ids[query.offset:query.offset + page_limit(node, query.limit)]
    views = await node.backend.presence.snapshot(page)
    return Members(room=room, total=len(ids), members=[
        Member(user_id=v.user_id, username=v.username, online=v.online) for v in views])


@routes.get("/api/rooms/{id}/history", summary="A room's history after `since` (members and "
            "admins)", access="user", query=SinceQuery, response=RoomHistory, errors=(403, 404),
            tags=("rooms",))
async def room_history(request: web.Request, caller: Caller, query: SinceQuery) -> RoomHistory:
    node = request.app[NODE]
    room = (await existing_room(node, request.match_info["id"])).id
    if not caller.admin and room not in await node.backend.rooms.user_rooms(
            caller.need_user().id):
        raise ApiError(403, ErrorCode.NOT_IN_ROOM, f"only members of {room!r} may read its history")
    page = await node.backend.history.since(room, query.since, limit=page_limit(node, query.limit))
    return RoomHistory(room=room, messages=page.messages, recovered=page.recovered,
                       offset=page.offset)


async def _membership(request: web.Request, user: User, type_: str) -> Membership:
    """Run the handler of ``join`` or ``leave`` on each of ``user``'s open connections on this
    node, as if each had sent the frame (each gets the handler's reply)."""
    node, registry = request.app[NODE], request.app[REGISTRY]
    room = request.match_info["id"]
    handler = registry.handlers.get(type_)
    if handler is None:
        raise ApiError(400, ErrorCode.UNKNOWN_MESSAGE_TYPE, f"no plugin handles {type_!r}")
    conns = [c for c in node.hub.user_connections(user.id)
             if not c.closing and (type_ == "join" or room in c.rooms)]
    if not conns and await node.backend.rooms.get(room) is None:
        raise not_found(f"room {room!r}")
    if not conns and type_ == "join":  # nothing would join: say so, not 200 with 0 connections
        raise ApiError(409, HttpCode.NO_CONNECTION,
                       f"{user.id!r} has no open connection on this node to join {room!r} with; "
                       "a service posts without one (POST /api/messages, "
                       "permissions.post_without_connection)")
    for conn in conns:
        env = Envelope(type_, room=room)
        env.payload = handler.validate({})
        await dispatch(node, registry, conn, env)
    return Membership(room=room, connections=len(conns),
                      members_count=await node.backend.rooms.member_count(room))


@routes.post("/api/rooms/{id}/join", summary="Join a room with every open connection of the "
             "bearer", access="bearer", response=Membership, errors=(404, 409), tags=("rooms",))
async def room_join(request: web.Request, caller: Caller) -> Membership:
    return await _membership(request, caller.need_user(), "join")


@routes.post("/api/rooms/{id}/leave", summary="Leave a room with every open connection of the "
             "bearer", access="bearer", response=Membership, errors=(404,), tags=("rooms",))
async def room_leave(request: web.Request, caller: Caller) -> Membership:
    return await _membership(request, caller.need_user(), "leave")
