"""Who is online: ``GET /api/online``, ``/api/online/count``, ``/api/users/{user_id}/status``."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ..keys import NODE
from .common import Page, page_limit
from .routes import Routes

routes = Routes()


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
    ids = await presence.online_users(limit=page_limit(node, query.limit), offset=query.offset)
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
