"""The public plugin API: everything a plugin imports comes from this module.

A plugin is a class with a ``name``, an optional ``Config`` model for its section of
``websocket.yaml`` (``plugins.<name>``), async handlers marked with :func:`handles`, optional
lifecycle hooks and optional pipeline stages::

    from server.plugin_api import BaseModel, Context, Plugin, handles

    class Vote(BaseModel):
        poll: str
        choice: int

    class PollPlugin(Plugin):
        name = "poll"

        @handles("poll.vote", schema=Vote)
        async def vote(self, ctx: Context, data: Vote) -> None:
            await ctx.send_to_room(ctx.room, "poll.vote", data.model_dump())
            await ctx.ack()

Handlers return nothing, or raise :class:`MessageRejected` (the client gets an ``error`` frame
and stays connected). Anything else a handler raises becomes ``INTERNAL_ERROR``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from .config import Config, RoomOptions
from .errors import CloseConnection, MessageRejected
from .protocol import CloseCode, Envelope, ErrorCode
from .protocol import frame as make_frame

if TYPE_CHECKING:
    from .connection import Connection
    from .services import Services

__all__ = [
    "BaseModel", "CloseCode", "CloseConnection", "Config", "ConfigDict", "Context", "Envelope",
    "ErrorCode", "Field", "MessageRejected", "make_frame", "Plugin", "RoomOptions", "Stage", "User", "handles",
]

HANDLER_ATTR = "__switchboard_handles__"
F = TypeVar("F", bound=Callable[..., Awaitable[None]])


@dataclass(frozen=True)
class HandlesSpec:
    type: str
    schema: type[BaseModel] | None
    description: str


def handles(type_: str, *, schema: type[BaseModel] | None = None, description: str = "") -> Callable[[F], F]:
    """Mark a plugin method as the handler of client message type ``type_``.

    ``schema`` is a pydantic model the frame's ``data`` is validated against before the handler
    runs (``INVALID_MESSAGE`` otherwise); without one the handler gets ``data`` as a dict.
    """

    def mark(func: F) -> F:
        specs = list(getattr(func, HANDLER_ATTR, ()))
        specs.append(HandlesSpec(type_, schema, description or (func.__doc__ or "").strip()))
        setattr(func, HANDLER_ATTR, tuple(specs))
        return func

    return mark


@dataclass(frozen=True, slots=True)
class User:
    """The authenticated identity of a connection, from its JWT claims."""

    id: str
    username: str
    email: str | None = None
    roles: tuple[str, ...] = ()
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def public(self) -> dict[str, str]:
        """The ``from`` object of frames this user originates."""
        return {"id": self.id, "username": self.username}

    def has_any_role(self, roles: tuple[str, ...] | list[str]) -> bool:
        return any(r in self.roles for r in roles)


class Stage(Protocol):
    """A step of the inbound pipeline. ``process`` may raise MessageRejected or CloseConnection,
    return ``None`` to drop the frame silently, or return the (possibly changed) envelope."""

    name: str

    def process(self, conn: "Connection", env: Envelope) -> Envelope | None | Awaitable[Envelope | None]: ...


class Plugin:
    """Base class of every plugin. Hooks default to no-ops."""

    name: ClassVar[str] = ""
    #: pydantic model for this plugin's ``plugins.<name>`` config section
    Config: ClassVar[type[BaseModel] | None] = None

    def __init__(self, config: Any, services: "Services") -> None:
        self.config = config
        self.services = services

    async def on_startup(self) -> None:
        """Called once when the server starts, before it accepts connections."""

    async def on_connect(self, ctx: "Context") -> None:
        """Called for each connection after the ``connected`` frame was queued."""

    async def on_disconnect(self, ctx: "Context") -> None:
        """Called for each connection after it closed."""

    async def on_shutdown(self) -> None:
        """Called once while the server stops."""

    def stages(self) -> list[Stage]:
        """Pipeline stages this plugin adds, run after the built-in ones, before dispatch."""
        return []


class Context:
    """What a handler gets with its payload: the connection, the user, the frame, and the
    server's sending and room operations."""

    __slots__ = ("conn", "envelope", "services", "plugin")

    def __init__(self, conn: "Connection", envelope: Envelope | None, services: "Services",
                 plugin: Plugin | None = None) -> None:
        self.conn = conn
        self.envelope = envelope
        self.services = services
        self.plugin = plugin

    # --- who and what ---
    @property
    def user(self) -> User:
        return self.conn.user

    @property
    def room(self) -> str | None:
        return self.envelope.room if self.envelope else None

    @property
    def to(self) -> str | None:
        return self.envelope.to if self.envelope else None

    @property
    def log(self) -> Any:
        return self.conn.log

    @property
    def config(self) -> Any:
        """This plugin's validated config section."""
        return self.plugin.config if self.plugin else None

    @property
    def server_config(self) -> Config:
        return self.services.config

    # --- replies to this connection ---
    async def reply(self, type_: str, data: Any = None, **fields: Any) -> None:
        """Send ``type_`` to this connection, with ``reply_to`` set to the client's frame id."""
        reply_to = self.envelope.id if self.envelope else None
        self.services.send_to_connection(self.conn, type_, data, reply_to=reply_to, **fields)

    async def ack(self, data: dict[str, Any] | None = None) -> None:
        await self.reply("ack", data or {})

    # --- sending elsewhere ---
    async def send_to_user(self, user_id: str, type_: str, data: Any = None, *,
                           exclude_self: bool = False, **fields: Any) -> int:
        """Send to every connection of ``user_id`` (on every node); returns local deliveries."""
        exclude = self.conn.id if exclude_self else None
        return await self.services.send_to_user(user_id, type_, data, exclude=exclude,
                                                sender=self.user.public(), **fields)

    async def send_to_room(self, room: str, type_: str, data: Any = None, *,
                           exclude_self: bool = True, **fields: Any) -> None:
        exclude = self.conn.id if exclude_self else None
        await self.services.send_to_room(room, type_, data, exclude=exclude,
                                         sender=self.user.public(), **fields)

    async def join(self, room: str) -> int:
        """Join this connection to ``room``; returns the room's member count."""
        return await self.services.join(self.conn, room)

    async def leave(self, room: str) -> int:
        return await self.services.leave(self.conn, room)

    def room_options(self, room: str) -> RoomOptions:
        return self.services.config.rooms.options(room)
