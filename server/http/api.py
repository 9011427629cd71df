"""The HTTP API of PROTOCOL §6 (docs/api.md): health, presence, rooms, messages, operators'
calls, the OpenAPI document and the metrics. Every route is declared with
:class:`server.openapi.Routes`, which checks the caller, the query and the body before the
handler runs and documents the route from the same declaration.

``POST /api/messages`` takes the path of a ``message`` frame (``ws.handle_frame``: the
pipeline's rate limit, length and filter, the type's permission, the handler) on a connection
without a socket (:class:`HttpConnection`); ``/api/rooms/{id}/join`` and ``/leave`` run the
type's handler on each of the user's open connections (``ws.dispatch``).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Annotated, Any, cast

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..auth import mint_token
from ..backends.base import RoomInfo
from ..config import Config, FieldError
from ..connection import Connection
from ..errors import AuthError, ConfigError, MessageRejected
from ..keys import PIPELINE, REGISTRY, NODE
from .openapi import ApiError, Caller, HttpCode, Routes, document, invalid_request, rejected
from ..identity import User
from ..protocol import CloseCode, Envelope, ErrorCode, new_id
from ..reload import RELOADER
from ..node import MAX_NAME_LENGTH, Node, check_name
from ..ws import dispatch, handle_frame

log = structlog.get_logger(__name__)
routes = Routes()

#: most users whose HTTP "connection" state (rate-limit buckets) is kept at once
MAX_HTTP_SESSIONS = 10000
_READY_TIMEOUT = 2.0


# --- shared pieces --------------------------------------------------------------------------
def _name(value: str) -> str:
    try:
        check_name("name", value)
    except MessageRejected:
        raise ValueError(f"must be 1-{MAX_NAME_LENGTH} printable characters without leading or "
                         "trailing spaces") from None
    return value


#: a room name or a user id
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH), AfterValidator(_name)]
#: a message type, as plugins name them
TypeName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]


class Page(BaseModel):
    model_config = ConfigDict(extra="ignore")
    limit: int | None = Field(None, ge=1, le=1_000_000, description=(
        "items to return: api.page_size when absent, at most api.max_page_size"))
    offset: int = Field(0, ge=0, le=1_000_000_000, description="items to skip")


class SinceQuery(Page):
    since: str | None = Field(None, max_length=200,
                              description="offset of the last item already seen")


def _limit(node: Node, limit: int | None) -> int:
    api = node.config.api
    return min(limit or api.page_size, api.max_page_size)


def _not_found(what: str) -> ApiError:
    return ApiError(404, ErrorCode.NOT_FOUND, f"{what} does not exist")


# --- health ---------------------------------------------------------------------------------
class Health(BaseModel):
    status: str
    node: str


class Ready(Health):
    backend: str


@routes.get("/healthz", summary="Liveness: 200 while the process serves requests",
            response=Health, tags=("health",))
async def healthz(request: web.Request) -> Health:
    return Health(status="ok", node=request.app[NODE].node_id)


@routes.get("/readyz", summary="Readiness: the backend answers and the server is not draining",
            response=Ready, errors=(503,), tags=("health",))
async def readyz(request: web.Request) -> Ready:
    node = request.app[NODE]
    if node.hub.draining:
        raise ApiError(503, HttpCode.NOT_READY, "the server is shutting down")
    try:
        async with asyncio.timeout(_READY_TIMEOUT):
            reachable = await node.backend.ping()
    except Exception as exc:  # whatever the backend's client raises
        log.warning("backend_unreachable", error=str(exc) or type(exc).__name__)
        reachable = False
    if not reachable:
        node.metrics.backend_error("ping")
        raise ApiError(503, HttpCode.NOT_READY, "the backend does not answer")
    return Ready(status="ready", node=node.node_id, backend=node.config.backend.type)


# --- documents ------------------------------------------------------------------------------
class ProtocolTypes(BaseModel):
    types: list[dict[str, Any]]


class OpenApiDocument(BaseModel):
    model_config = ConfigDict(extra="allow")
    openapi: str
    paths: dict[str, Any]


@routes.get("/api/protocol", summary="Every registered message type: plugin, direction, JSON "
            "Schema of data", response=ProtocolTypes, tags=("documents",))
async def protocol(request: web.Request) -> web.Response:
    """Every registered message type with its plugin and the JSON Schema of its ``data``."""
    return web.json_response({"types": request.app[REGISTRY].describe()})


@routes.get("/api/openapi.json", summary="This API as OpenAPI 3.1", response=OpenApiDocument,
            tags=("documents",))
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document(request.app))


def _metrics_access(config: Config) -> Any:
    return "admin" if config.metrics.admin_only else "anyone"


@routes.get("/metrics", summary="Prometheus metrics (docs/operations.md)", access=_metrics_access,
            content_type="text/plain", errors=(404,), tags=("metrics",))
async def metrics(request: web.Request) -> web.Response:
    node = request.app[NODE]
    if not node.config.metrics.enabled:
        raise ApiError(404, ErrorCode.NOT_FOUND, "metrics are off (metrics.enabled: false)")
    return web.Response(body=node.metrics.exposition(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


# --- presence -------------------------------------------------------------------------------
class OnlineUser(BaseModel):
    user_id: str
    username: str | None
    status: str
    connections: int
    connected_at: float | None = Field(description="Unix seconds the oldest open connection opened")
    last_seen: float | None = Field(description="Unix seconds the user was last seen going offline")


class OnlineList(BaseModel):
    online_count: int
    users: list[OnlineUser]


class OnlineCount(BaseModel):
    online_count: int


class UserStatus(BaseModel):
    model_config = ConfigDict(extra="allow")
    user_id: str
    online: bool
    status: str
    last_seen: float | None
    connections: int


@routes.get("/api/online", summary="Online users, cluster-wide, in the order they came online",
            access="user", query=Page, response=OnlineList, tags=("presence",))
async def online(request: web.Request, query: Page) -> OnlineList:
    node = request.app[NODE]
    presence = node.backend.presence
    ids = await presence.online_users(limit=_limit(node, query.limit), offset=query.offset)
    users = [OnlineUser(user_id=p.user_id, username=p.username, status=p.status,
                        connections=p.connections, connected_at=p.connected_at,
                        last_seen=p.last_seen) for p in await presence.snapshot(ids)]
    return OnlineList(online_count=await presence.online_count(), users=users)


@routes.get("/api/online/count", summary="How many users are online, cluster-wide",
            access="user", response=OnlineCount, tags=("presence",))
async def online_count(request: web.Request) -> OnlineCount:
    return OnlineCount(online_count=await request.app[NODE].backend.presence.online_count())


@routes.get("/api/users/{user_id}/status", summary="One user's presence (offline when unknown)",
            access="user", response=UserStatus, tags=("presence",))
async def user_status(request: web.Request) -> UserStatus:
    presence = request.app[NODE].backend.presence
    (view,) = await presence.snapshot([request.match_info["user_id"]])
    return UserStatus.model_validate(view.public())


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
                 rooms={r.id: r.members for r in rooms}, node=node.node_id)


# --- rooms ----------------------------------------------------------------------------------
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


async def _existing(node: Node, room: str) -> RoomInfo:
    info = await node.backend.rooms.get(room)
    if info is None:
        raise _not_found(f"room {room!r}")
    return info


@routes.get("/api/rooms", summary="Rooms, by id", access="user", query=Page, response=RoomList,
            tags=("rooms",))
async def rooms_list(request: web.Request, query: Page) -> RoomList:
    node = request.app[NODE]
    rooms = sorted(await node.backend.rooms.list(), key=lambda r: r.id)
    page = rooms[query.offset:query.offset + _limit(node, query.limit)]
    return RoomList(total=len(rooms), rooms=[await _room(node, info) for info in page])


@routes.get("/api/rooms/{id}", summary="One room", access="user", response=Room, errors=(404,),
            tags=("rooms",))
async def room_get(request: web.Request) -> Room:
    node = request.app[NODE]
    return await _room(node, await _existing(node, request.match_info["id"]))


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
    info, created = await rooms.create(body.id, name=body.name, description=body.description,
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
        raise _not_found(f"room {room!r}")
    log.info("api_room_deleted", room=room, by=caller.name)
    return RoomDeleted(id=room, connections=connections)


@routes.get("/api/rooms/{id}/members", summary="A room's members, by user id", access="user",
            query=Page, response=Members, errors=(404,), tags=("rooms",))
async def room_members(request: web.Request, query: Page) -> Members:
    node = request.app[NODE]
    room = (await _existing(node, request.match_info["id"])).id
    ids: list[str] = sorted(await node.backend.rooms.members(room))
    page = ids[query.offset:query.offset + _limit(node, query.limit)]
    views = await node.backend.presence.snapshot(page)
    return Members(room=room, total=len(ids), members=[
        Member(user_id=v.user_id, username=v.username, online=v.online) for v in views])


@routes.get("/api/rooms/{id}/history", summary="A room's history after `since` (members and "
            "admins)", access="user", query=SinceQuery, response=RoomHistory, errors=(403, 404),
            tags=("rooms",))
async def room_history(request: web.Request, caller: Caller, query: SinceQuery) -> RoomHistory:
    node = request.app[NODE]
    room = (await _existing(node, request.match_info["id"])).id
    if not caller.admin and room not in await node.backend.rooms.user_rooms(
            caller.need_user().id):
        raise ApiError(403, ErrorCode.NOT_IN_ROOM, f"only members of {room!r} may read its history")
    page = await node.backend.history.since(room, query.since,
                                                limit=_limit(node, query.limit))
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
        raise _not_found(f"room {room!r}")
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


# --- messages -------------------------------------------------------------------------------
class HttpConnection(Connection):
    """The bearer of one HTTP call as a connection without a socket, for the path a frame
    takes. It is in the rooms its user is in; its per-connection state (the rate limit's
    buckets) lasts across the user's calls; what it is sent is kept in ``frames``."""

    __slots__ = ("frames",)

    def __init__(self, user: User, request: web.Request, state: dict[str, Any],
                 rooms: set[str]) -> None:
        super().__init__(cast(web.WebSocketResponse, None), user, remote=request.remote or "",
                         log=None, max_bytes=0, max_messages=0, request=request)
        self.log = log.bind(conn_id=self.id, user_id=user.id, via="http")
        self.state = state
        self.rooms = rooms
        self.frames: list[dict[str, Any]] = []

    def send(self, payload: bytes, *, droppable: bool = False) -> bool:
        self.frames.append(orjson.loads(payload))
        return True

    def close(self, code: int, reason: str = "") -> None:
        self.closing = True
        self.close_code = code

    def reply(self, frame_id: str) -> dict[str, Any] | None:
        return next((f for f in self.frames if f.get("reply_to") == frame_id), None)


class HttpSessions:
    """Each user's HTTP connection state, least recently used dropped first past
    ``MAX_HTTP_SESSIONS``; all of it dropped when the config changes (it holds buckets built
    from the old limits)."""

    def __init__(self) -> None:
        self._states: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._config: Config | None = None

    def state(self, user_id: str, config: Config) -> dict[str, Any]:
        if config is not self._config:
            self._states.clear()
            self._config = config
        state = self._states.get(user_id)
        if state is None:
            state = self._states[user_id] = {}
            if len(self._states) > MAX_HTTP_SESSIONS:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(user_id)
        return state


HTTP_SESSIONS: web.AppKey[HttpSessions] = web.AppKey("switchboard_http_sessions", HttpSessions)


class MessagePost(BaseModel):
    model_config = ConfigDict(extra="forbid")
    room: Name | None = Field(None, description="a room the bearer is in")
    to: Name | None = Field(None, description="a user id: a private message")
    content: str = Field(description="the text (at most messages.max_message_length)")
    data: dict[str, Any] = Field(default_factory=dict, description="extra fields of data")

    @model_validator(mode="after")
    def _one_target(self) -> "MessagePost":
        if (self.room is None) == (self.to is None):
            raise FieldError("room", "give exactly one of room and to")
        return self


class MessageSent(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = Field(None, description="the message's id; null when a stage dropped it")
    offset: str | None = Field(None, description="its offset in the room's history or the inbox")


@routes.post("/api/messages", summary="Send a message as the bearer, the way a message frame "
             "goes (permissions, rate limit, length, filter)", access="bearer", body=MessagePost,
             response=MessageSent, errors=(403, 404, 409, 422, 429), tags=("messages",))
async def message_post(request: web.Request, caller: Caller, body: MessagePost) -> MessageSent:
    node = request.app[NODE]
    user = caller.need_user()
    state = request.app[HTTP_SESSIONS].state(user.id, node.config)
    conn = HttpConnection(user, request, state, await node.backend.rooms.user_rooms(user.id))
    node.stats.messages_in += 1
    frame_id = new_id()
    frame = {"type": "message", "id": frame_id, "room": body.room, "to": body.to,
             "data": {**body.data, "content": body.content}}
    await handle_frame(node, request.app[REGISTRY], request.app[PIPELINE], conn,
                       orjson.dumps(frame).decode())
    reply = conn.reply(frame_id)
    if reply is None:
        if conn.close_code == CloseCode.RATE_LIMITED:
            raise ApiError(429, ErrorCode.RATE_LIMITED, "rate limit: too many violations")
        return MessageSent(id=None, offset=None)
    data = reply.get("data") or {}
    if reply["type"] == "error":
        raise rejected(MessageRejected(data.get("code", ErrorCode.INTERNAL_ERROR),
                                       data.get("message", ""),
                                       retry_after=data.get("retry_after")))
    return MessageSent.model_validate(data)


class Inbox(BaseModel):
    messages: list[dict[str, Any]]


@routes.get("/api/messages/inbox", summary="The bearer's unread private messages, oldest first",
            access="bearer", query=SinceQuery, response=Inbox, tags=("messages",))
async def inbox(request: web.Request, caller: Caller, query: SinceQuery) -> Inbox:
    node = request.app[NODE]
    messages = await node.backend.inbox.fetch(caller.need_user().id, query.since,
                                                  limit=_limit(node, query.limit))
    return Inbox(messages=messages)


# --- pushing (operators) --------------------------------------------------------------------
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


def _notifier(request: web.Request, type_: str) -> Any:
    """The notification plugin's ``notify(to, data)`` (stores the notification unread, then
    pushes it) when ``type_`` is ``notification`` and that plugin is enabled; else None."""
    owner = request.app[REGISTRY].handlers.get(type_) if type_ == "notification" else None
    return getattr(owner.plugin, "notify", None) if owner is not None else None


@routes.post("/api/send", summary="Push a frame of any type to users (a notification is also "
             "stored unread)", access="admin", body=SendBody, response=Sent, tags=("operators",))
async def send(request: web.Request, caller: Caller, body: SendBody) -> Sent:
    node = request.app[NODE]
    users = list(dict.fromkeys(([body.to_user_id] if body.to_user_id else []) + body.user_ids))
    notify = _notifier(request, body.type)
    before = node.stats.messages_out
    for user_id in users:
        if notify is None:
            await node.send_to_user(user_id, body.type, body.data)
            continue
        try:
            await notify(user_id, body.data)
        except ValidationError as exc:
            raise invalid_request(exc, ("data",)) from None
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
        await _existing(node, body.room)
        await node.send_to_room(body.room, body.type, body.data)
    else:
        await node.broadcast(body.type, body.data)
    delivered = node.stats.messages_out - before
    log.info("api_broadcast", type=body.type, room=body.room, delivered=delivered, by=caller.name)
    return Broadcast(delivered=delivered)


# --- connections and tokens (operators) -----------------------------------------------------
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


@routes.post("/api/disconnect", summary="Close every connection of a user on this node",
             access="admin", body=DisconnectBody, response=Closed, tags=("operators",))
async def disconnect(request: web.Request, caller: Caller, body: DisconnectBody) -> Closed:
    conns = [c for c in request.app[NODE].hub.user_connections(body.user_id) if not c.closing]
    for conn in conns:
        conn.close(body.code, body.reason or "disconnected by an operator")
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
    node.auth.revocations.revoke(body.jti, body.exp)
    conns = [c for c in node.hub.connections.values()
             if not c.closing and c.user.claims.get("jti") == body.jti]
    for conn in conns:
        conn.close(CloseCode.KICKED, "token revoked")
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


# --- development ----------------------------------------------------------------------------
class DevTokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: Name = Field(description="also the user id (sub)")
    roles: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=16)


class PublicUser(BaseModel):
    id: str
    username: str


class DevToken(BaseModel):
    token: str
    user: PublicUser
    expires_at: int


DEV_TOKEN_TTL = 3600


@routes.post("/api/dev/token", summary="A token for anyone who asks, for the demo page (only "
             "with auth.dev_login: true; 404 otherwise)", body=DevTokenBody, response=DevToken,
             errors=(404, 409), tags=("development",))
async def dev_token(request: web.Request, body: DevTokenBody) -> DevToken:
    auth = request.app[NODE].config.auth
    if not auth.dev_login:
        raise _not_found("this route (auth.dev_login is off)")
    expires_at = int(time.time()) + DEV_TOKEN_TTL  # the token's exp is this or a second later
    try:
        token = mint_token(auth, sub=body.username, username=body.username,
                           roles=body.roles or None, ttl=DEV_TOKEN_TTL)
    except AuthError as exc:
        raise ApiError(409, ErrorCode.UNAUTHORIZED, str(exc)) from None
    log.info("dev_token_issued", user_id=body.username, roles=body.roles)
    return DevToken(token=token, user=PublicUser(id=body.username, username=body.username),
                    expires_at=expires_at)
