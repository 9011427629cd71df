"""The public plugin API: everything a plugin imports comes from this module.

A plugin is a class with a ``name``, an optional ``Config`` model for its section of
``websocket.yaml`` (``plugins.<name>``), async handlers marked with :func:`handles`, the
server-to-client types it sends (``emits``), optional lifecycle hooks and optional pipeline
stages::

    from server.plugin_api import BaseModel, Context, Plugin, PluginConfig, handles

    class Vote(BaseModel):
        poll: str
        choice: int

    class PollConfig(PluginConfig):
        max_options: int = 10

    class PollPlugin(Plugin):
        name = "poll"
        Config = PollConfig
        emits = {"poll.vote": Vote}

        @handles("poll.vote", schema=Vote)
        async def vote(self, ctx: Context, data: Vote) -> None:
            await ctx.send_to_room(ctx.room, "poll.vote", data)
            await ctx.ack()

Handlers return nothing, or raise :class:`MessageRejected` (the client gets an ``error`` frame
and stays connected). Anything else a handler raises becomes ``INTERNAL_ERROR``; the connection
stays open. docs/plugins.md is the guide.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    ClassVar,
    Mapping,
    Protocol,
    TypeVar,
)

import structlog
from pydantic import BaseModel, ConfigDict, Field

from .config import Config, RoomOptions
from .connection import Connection
from .errors import CloseConnection, MessageRejected
from .identity import User
from .buckets import TokenBucket
from .protocol import CloseCode, Envelope, ErrorCode, encode
from .protocol import frame as make_frame

if TYPE_CHECKING:
    from .node import Node

__all__ = [
    "BaseModel", "CloseCode", "CloseConnection", "Config", "ConfigDict", "Connection", "Context",
    "Envelope", "ErrorCode", "Field", "MessageRejected", "make_frame", "Plugin", "PluginConfig",
    "RoomOptions", "Stage", "TokenBucket", "User", "handles",
]

HANDLER_ATTR = "__switchboard_handles__"
F = TypeVar("F", bound=Callable[..., Awaitable[None]])


@dataclass(frozen=True)
class HandlesSpec:
    type: str
    schema: builtins.type[BaseModel] | None
    description: str


def handles(type_: str, *, schema: type[BaseModel] | None = None, description: str = "") -> Callable[[F], F]:
    """Mark an ``async def handler(self, ctx, data)`` method as the handler of client type ``type_``.

    ``schema`` is a pydantic model the frame's ``data`` is validated against before the handler
    runs (``INVALID_MESSAGE`` otherwise); without one the handler gets ``data`` as a dict.
    ``description`` (default: the docstring) is shown in ``GET /api/protocol``.
    """

    def mark(func: F) -> F:
        specs = list(getattr(func, HANDLER_ATTR, ()))
        specs.append(HandlesSpec(type_, schema, description or (func.__doc__ or "").strip()))
        setattr(func, HANDLER_ATTR, tuple(specs))
        return func

    return mark


class PluginConfig(BaseModel):
    """Base for a plugin's ``Config`` model: frozen, and a misspelt key is a startup error
    (``plugins.<name>.<key>: extra inputs are not permitted``) rather than silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Stage(Protocol):
    """A step of the inbound pipeline. ``process`` may raise MessageRejected or CloseConnection,
    return ``None`` to drop the frame silently, or return the (possibly changed) envelope.
    It may be a plain or an async method. A stage that rate-limits some types itself lists them
    in an optional ``rate_limited_types`` (a set of type names): the built-in rate limit then
    leaves those types alone, unless ``rate_limit.per_type`` lists them."""

    name: str

    def process(self, conn: Connection, env: Envelope) -> Envelope | None | Awaitable[Envelope | None]: ...


class Plugin:
    """Base class of every plugin. Hooks default to no-ops; overridden hooks must be
    ``async def`` with the same parameters (checked at startup)."""

    name: ClassVar[str] = ""
    #: pydantic model (best a :class:`PluginConfig`) for this plugin's ``plugins.<name>`` section
    Config: ClassVar[type[BaseModel] | None] = None
    #: server-to-client types this plugin sends, with the model of their ``data`` (or None)
    emits: ClassVar[Mapping[str, type[BaseModel] | None]] = {}

    def __init__(self, config: Any, node: "Node") -> None:
        #: the validated ``Config`` instance (a dict when the plugin has no ``Config``)
        self.config = config
        #: the node: ``node.backend`` (rooms, presence, history, inbox), ``node.hub``
        self.node = node
        #: a structlog logger bound with ``plugin=<name>``, for hooks outside a connection
        self.log: Any = structlog.get_logger(f"plugins.{self.name}").bind(plugin=self.name)

    async def on_startup(self) -> None:
        """Called once when the server starts, before it accepts connections. Raising here
        stops the server from starting, with the plugin named."""

    async def on_connect(self, ctx: "Context") -> None:
        """Called for each connection after the ``connected`` frame was queued."""

    async def on_disconnect(self, ctx: "Context") -> None:
        """Called for each connection after it closed and left its rooms (``ctx.conn.rooms``
        still names them)."""

    async def on_shutdown(self) -> None:
        """Called once while the server stops (also when a later plugin's on_startup failed)."""

    def stages(self) -> list[Stage]:
        """Pipeline stages this plugin adds, run after the built-in ones, before dispatch."""
        return []


class Context:
    """What a handler or a connection hook gets: the connection, the user, the frame (None in
    hooks), this plugin's config, state and logger, and the server's sending and room operations."""

    __slots__ = ("conn", "envelope", "node", "plugin", "_log")

    def __init__(self, conn: Connection, envelope: Envelope | None, node: "Node",
                 plugin: Plugin | None = None) -> None:
        self.conn = conn
        self.envelope = envelope
        self.node = node
        self.plugin = plugin
        self._log: Any = None

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
        """The connection's logger (``conn_id``, ``user_id``) bound with ``plugin`` and ``type``."""
        if self._log is None:
            fields: dict[str, str] = {}
            if self.plugin is not None:
                fields["plugin"] = self.plugin.name
            if self.envelope is not None:
                fields["type"] = self.envelope.type
            self._log = self.conn.log.bind(**fields)
        return self._log

    @property
    def config(self) -> Any:
        """This plugin's validated config section."""
        return self.plugin.config if self.plugin else None

    @property
    def server_config(self) -> Config:
        return self.node.config

    @property
    def state(self) -> dict[str, Any]:
        """This plugin's state for this connection (``conn.state[<plugin name>]``); lives as
        long as the connection."""
        state: dict[str, Any] = self.conn.state.setdefault(self.plugin.name if self.plugin else "", {})
        return state

    # --- replies to this connection ---
    async def reply(self, type_: str, data: Any = None, **fields: Any) -> None:
        """Send ``type_`` to this connection, with ``reply_to`` set to the client's frame id.
        ``fields`` are frame fields: ``room``, ``to``, ``sender``, ``offset``."""
        reply_to = self.envelope.id if self.envelope else None
        self.node.send_to_connection(self.conn, type_, data, reply_to=reply_to, **fields)

    async def ack(self, data: dict[str, Any] | None = None) -> None:
        await self.reply("ack", data or {})

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close this connection (from a hook; a handler may also raise CloseConnection)."""
        self.conn.close(code, reason)

    # --- sending elsewhere ---
    # Frames carry ``from`` = this user unless ``sender=`` is given (``sender=None`` omits it).
    async def send_to_user(self, user_id: str, type_: str, data: Any = None, *,
                           exclude_self: bool = False, **fields: Any) -> int:
        """Send to every connection of ``user_id`` (on every node); returns local deliveries."""
        exclude = self.conn.id if exclude_self else None
        fields.setdefault("sender", self.user.public())
        return await self.node.send_to_user(user_id, type_, data, exclude=exclude, **fields)

    async def send_to_room(self, room: str, type_: str, data: Any = None, *,
                           exclude_self: bool = True, **fields: Any) -> None:
        """Send to every member connection of ``room`` (on every node), by default not to this
        connection."""
        exclude = self.conn.id if exclude_self else None
        fields.setdefault("sender", self.user.public())
        await self.node.send_to_room(room, type_, data, exclude=exclude, **fields)

    async def broadcast(self, type_: str, data: Any = None, *, exclude_self: bool = False,
                        **fields: Any) -> None:
        """Send to every connection of the cluster."""
        exclude = self.conn.id if exclude_self else None
        fields.setdefault("sender", self.user.public())
        await self.node.broadcast(type_, data, exclude=exclude, **fields)

    # --- rooms ---
    async def join(self, room: str) -> int:
        """Join this connection to ``room`` with every room rule checked (raises
        MessageRejected: FORBIDDEN, NOT_FOUND, ROOM_FULL, ROOM_LIMIT_REACHED); returns the
        room's member count."""
        return await self.node.join(self.conn, room)

    async def leave(self, room: str) -> int:
        """Leave ``room`` (NOT_IN_ROOM when not a member); returns the member count."""
        return await self.node.leave(self.conn, room)

    def replay_fit(self, frames: list[dict[str, Any]]) -> int:
        """How many of ``frames``, from the first, to send at once when replaying stored
        messages: they must fit in half of this connection's outbound queue
        (``server.write_buffer_size`` bytes, ``server.max_queued_messages`` frames), or a
        reconnecting client would be closed with 4008 by its own catch-up. At least one."""
        server = self.node.config.server
        return fit_frames(frames, server.write_buffer_size // 2,
                          max(server.max_queued_messages // 2, 1))

    def room_options(self, room: str) -> RoomOptions:
        """The ``rooms`` config that applies to ``room`` (namespace options merged)."""
        return self.node.room_options(room)


def fit_frames(frames: list[dict[str, Any]], max_bytes: int, max_count: int) -> int:
    """How many of ``frames``, from the first, fit in ``max_bytes`` and ``max_count`` once
    encoded (at least one, when there is one)."""
    used = 0
    for n, message in enumerate(frames[:max_count]):
        used += len(encode(message))
        if used > max_bytes and n:
            return n
    return min(len(frames), max_count)
