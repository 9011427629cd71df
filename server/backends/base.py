"""Backend contracts. The hub and every plugin reach rooms, presence, history and the inbox
only through these, so the memory implementation and the Redis one are interchangeable.

Delivery follows Centrifuge: the hub knows only this node's connections; a publication goes to
the broker, which hands it to every node (this one included) through ``Deliver``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Literal, Protocol

TargetKind = Literal["room", "user", "all"]



@dataclass(frozen=True, slots=True)
class Route:
    """Who of the targets does not get a publication, and how hard to try. Travels with the
    payload to every node (the Redis broker serialises it)."""

    exclude: str | None = None  # a connection id (usually the sender's own)
    exclude_user: str | None = None  # a user none of whose connections get it
    droppable: bool = False  # a slow client drops it instead of being closed (typing)


DEFAULT_ROUTE = Route()

#: Called by the broker on every node for each publication
Deliver = Callable[[TargetKind, str, bytes, Route], None]


class Broker(Protocol):
    async def start(self, deliver: Deliver) -> None: ...
    async def close(self) -> None: ...
    async def publish(self, kind: TargetKind, key: str, payload: bytes,
                      route: Route = DEFAULT_ROUTE) -> None: ...


@dataclass
class RoomInfo:
    id: str
    name: str
    description: str
    created_at: float
    max_members: int | None = None
    members: int = 0


class RoomStore(Protocol):
    """Which rooms exist and who is in them, cluster-wide (members are user ids)."""

    async def get(self, room: str) -> RoomInfo | None: ...
    async def create(self, room: str, *, name: str = "", description: str = "",
                     max_members: int | None = None) -> tuple[RoomInfo, bool]: ...
    async def delete(self, room: str) -> bool: ...
    async def list(self) -> list[RoomInfo]: ...
    async def count(self) -> int: ...
    async def add_member(self, room: str, user_id: str, conn_id: str) -> int: ...
    async def remove_member(self, room: str, user_id: str, conn_id: str) -> tuple[int, bool]:
        """Returns (member count, True when that user has no connection left in the room)."""
        ...
    async def members(self, room: str) -> list[str]: ...
    async def member_count(self, room: str) -> int: ...
    async def user_rooms(self, user_id: str) -> set[str]: ...


class PresenceStore(Protocol):
    async def add_connection(self, user_id: str, conn_id: str, info: dict[str, Any]) -> int:
        """Returns how many connections the user now has (cluster-wide)."""
        ...
    async def remove_connection(self, user_id: str, conn_id: str) -> int: ...
    async def connections(self, user_id: str) -> dict[str, dict[str, Any]]: ...
    async def online_users(self) -> list[str]: ...
    async def online_count(self) -> int: ...
    async def set_status(self, user_id: str, status: dict[str, Any]) -> None: ...
    async def get_status(self, user_id: str) -> dict[str, Any] | None: ...
    async def last_seen(self, user_id: str) -> float | None: ...


@dataclass
class HistoryPage:
    messages: list[dict[str, Any]]
    recovered: bool
    offset: str  # the room's current offset (top of the stream)


class History(Protocol):
    async def append(self, room: str, message: dict[str, Any], *, size: int,
                     ttl: float) -> str:
        """Store ``message`` (its ``offset`` field is set here) and return the new offset."""
        ...
    async def since(self, room: str, offset: str | None, *, limit: int) -> HistoryPage: ...
    async def current(self, room: str) -> str: ...
    async def drop(self, room: str) -> None: ...


class Inbox(Protocol):
    async def push(self, user_id: str, message: dict[str, Any], *, size: int, ttl: float) -> str: ...
    async def fetch(self, user_id: str, since: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]: ...
    async def ack(self, user_id: str, offset: str) -> None: ...


class Backend(Protocol):
    node_id: str
    broker: Broker
    rooms: RoomStore
    presence: PresenceStore
    history: History
    inbox: Inbox

    async def start(self, deliver: Deliver) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> bool: ...


MaybeAwaitable = Awaitable[None] | None
