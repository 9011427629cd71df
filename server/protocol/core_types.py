"""The core's own message types (PROTOCOL.md §3): what clients send that no plugin handles
(``ping``, ``auth``, ``refresh``) and what the core itself sends, with the models of their
``data``; ``GET /api/protocol`` lists them like any plugin's, and no plugin may claim them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Empty(BaseModel):
    pass


class _Token(BaseModel):
    token: str


class _Expiry(BaseModel):
    expires_at: int | None


class _Heartbeat(BaseModel):
    interval: float
    timeout: float


class _PublicUser(BaseModel):
    id: str
    username: str


class _Connected(BaseModel):
    connection_id: str
    user: _PublicUser
    online_count: int
    rooms: list[str]
    heartbeat: _Heartbeat
    expires_at: int | None
    node: str


class _Ack(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    offset: str | None = None


class _Error(BaseModel):
    code: str
    message: str
    retry_after: float | None = None


class _Membership(BaseModel):
    room: str
    user: _PublicUser
    members_count: int


CORE_TYPES: dict[str, tuple[type[BaseModel], str]] = {
    "ping": (_Empty, "client keep-alive; answered with pong"),
    "auth": (_Token, "first-frame authentication; answered with connected"),
    "refresh": (_Token, "a new token for the same sub; answered with refreshed"),
}
CORE_EMITS: dict[str, tuple[type[BaseModel], str]] = {
    "connected": (_Connected, "the first frame after the upgrade and authentication"),
    "pong": (_Empty, "answers ping"),
    "refreshed": (_Expiry, "answers refresh"),
    "ack": (_Ack, "a client frame was accepted; the fields depend on the type"),
    "error": (_Error, "a client frame was refused; the connection stays open"),
    "user_joined": (_Membership, "another user joined a room of this connection"),
    "user_left": (_Membership, "another user's last connection left a room of this connection"),
}


