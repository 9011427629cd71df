"""The public plugin API: everything a plugin imports comes from this module.

A plugin is a class with a ``name``, an optional ``Config`` model for its section of
``websocket.yaml`` (``plugins.<name>``), async handlers marked with :func:`handles`, the
server-to-client types it sends (``emits``), its own error codes (``errors``), optional
lifecycle hooks and optional pipeline stages. It reaches the server only through
:class:`NodeAPI` (``self.node``, ``ctx.node``) and keeps its data in its own :class:`Store`
(``self.store``), shared by every node::

    from server.plugin_api import BaseModel, Context, Plugin, PluginConfig, handles

    class Vote(BaseModel):
        poll: str
        choice: int

    class PollConfig(PluginConfig):
        max_options: int = 10

    class PollPlugin(Plugin[PollConfig]):
        name = "poll"
        Config = PollConfig
        emits = {"poll.vote": Vote}

        @handles("poll.vote", schema=Vote)
        async def vote(self, ctx: Context[PollConfig], data: Vote) -> None:
            await ctx.send_to_room(ctx.room, "poll.vote", data)
            await ctx.ack()

Handlers return nothing, or raise :class:`MessageRejected` (the client gets an ``error`` frame
and stays connected). Anything else a handler raises becomes ``INTERNAL_ERROR``; the connection
stays open. docs/plugins.md is the guide.

This module imports only the leaves of the core (identity, buckets, errors, protocol, room
options and the backend's contract types), never the implementations: the contract a plugin
builds on does not move when the core does.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from collections.abc import Set as AbstractSet
from typing import (
    Any,
    Awaitable,
    Callable,
    ClassVar,
    Generic,
    Mapping,
    Protocol,
    TypeVar,
    Union,
)

import structlog
from pydantic import BaseModel, ConfigDict, Field, create_model

from .backends.base import HistoryPage, Store, UserPresence
from .buckets import TokenBucket
from .config.base import StrictModel
from .errors import CloseConnection, MessageRejected
from .identity import User
from .protocol import CloseCode, Envelope, ErrorCode
from .protocol import frame as make_frame
from .rooms import RoomOptions

__all__ = [
    "BaseModel", "CloseCode", "CloseConnection", "ConfigDict", "Connection", "Context", "Envelope",
    "ErrorCode", "Field", "HistoryPage", "create_model", "MessageRejected", "make_frame", "NodeAPI", "Plugin",
    "PluginConfig", "PresenceView", "RoomOptions", "Stage", "Store", "TokenBucket", "User",
    "UserPresence", "handles",
]

HANDLER_ATTR = "__switchboard_handles__"
F = TypeVar("F", bound=Callable[..., Awaitable[None]])
#: a plugin's config model instance (``Plugin[PollConfig]`` types ``self.config``, ``ctx.config``)
C = TypeVar("C")
#: a handler's ``data`` model, or a function of the plugin's config that builds it at startup
SchemaSpec = Union[type[BaseModel], Callable[[Any], type[BaseModel]], None]

_RST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_RST_LITERAL = re.compile(r"``([^`]+)``")


def clean_doc(text: str | None) -> str:
    """A docstring as a description: indentation gone (``inspect.cleandoc``), RST roles and
    double backticks made plain Markdown."""
    text = inspect.cleandoc(text or "")
    return _RST_LITERAL.sub(r"`\1`", _RST_ROLE.sub(r"`\1`", text))


@dataclass(frozen=True)
class HandlesSpec:
    type: str
    schema: SchemaSpec
    description: str


def handles(type_: str, *, schema: SchemaSpec = None, description: str = "") -> Callable[[F], F]:
    """Mark an ``async def handler(self, ctx, data)`` method as the handler of client type ``type_``.

    ``schema`` is a pydantic model the frame's ``data`` is validated against before the handler
    runs (``INVALID_MESSAGE`` otherwise), or a function ``schema(config) -> model`` called once
    at startup with the plugin's validated config (so a model can take an allowed list from the
    config, and ``GET /api/protocol`` shows it); without one the handler gets ``data`` as a dict.
    ``description`` (default: the docstring) is shown in ``GET /api/protocol``.
    """

    def mark(func: F) -> F:
        specs = list(getattr(func, HANDLER_ATTR, ()))
        specs.append(HandlesSpec(type_, schema, description or clean_doc(func.__doc__)))
        setattr(func, HANDLER_ATTR, tuple(specs))
        return func

    return mark


class PluginConfig(StrictModel):
    """Base for a plugin's ``Config`` model, with the core sections' rules (frozen, an empty
    section takes the defaults, finite numbers, ``true`` is not a number); a misspelt key is a
    startup error (``plugins.<name>.<key>: unknown key (did you mean ...)``) rather than
    silently ignored."""

    model_config = ConfigDict(extra="forbid")


# --- what a plugin sees of the server ---------------------------------------------------------
class Connection(Protocol):
    """One client connection as a plugin sees it."""

    @property
    def id(self) -> str: ...
    @property
    def user(self) -> User: ...
    #: the client's address (after trusted proxies), Unix seconds it connected, and when its
    #: token expires (None: never)
    remote: str
    connected_at: float
    expires_at: float | None
    #: the rooms this connection is in (read-only: join and leave through the node)
    rooms: AbstractSet[str]
    #: free per-connection state, keyed by plugin name (``ctx.state`` is this plugin's)
    state: dict[str, Any]
    #: the connection's structlog logger (``conn_id``, ``user_id``)
    log: Any

    def close(self, code: int, reason: str = "") -> None: ...


class Stage(Protocol):
    """A step of the inbound pipeline. ``process`` may raise MessageRejected or CloseConnection,
    return ``None`` to drop the frame silently, or return the (possibly changed) envelope.
    It may be a plain or an async method. A stage that rate-limits some types itself lists them
    in an optional ``rate_limited_types`` (a set of type names): the built-in rate limit then
    leaves those types alone, unless ``rate_limit.per_type`` lists them."""

    name: str

    def process(self, conn: Connection, env: Envelope) -> Envelope | None | Awaitable[Envelope | None]: ...


class PresenceView(Protocol):
    """Who is connected, cluster-wide, and the status each user set (docs/plugins.md)."""

    async def connections(self, user_id: str) -> dict[str, dict[str, Any]]: ...
    async def online_count(self) -> int: ...
    async def snapshot(self, user_ids: list[str]) -> list[UserPresence]: ...
    async def set_status(self, user_id: str, status: dict[str, Any]) -> None: ...
    async def last_seen(self, user_id: str) -> float | None: ...
    async def mark_online(self, user_id: str) -> bool: ...
    async def mark_offline(self, user_id: str) -> float | None: ...
    def set_last_seen_ttl(self, seconds: float) -> None:
        """How long a user's ``last_seen`` is remembered after their last connection closed."""
        ...


class NodeAPI(Protocol):
    """What a plugin may do with the server: the node it runs on, which acts cluster-wide
    through the backend. ``Plugin.node`` and ``Context.node`` are this; the core's ``Node``
    implements it. Frames given as ``type_, data, **fields`` are built here; ``fields`` are
    frame fields (``room``, ``to``, ``sender``, ``offset``, ``id``, ``ts``, ``reply_to``).
    ``exclude`` is a connection id, ``exclude_user`` a user id whose connections are skipped,
    ``droppable`` frames are dropped for a slow client instead of closing it."""

    node_id: str

    @property
    def presence(self) -> PresenceView: ...

    # --- sending
    def send_to_connection(self, conn: Connection, type_: str, data: Any = None,
                           **fields: Any) -> bool: ...
    def send_frame(self, conn: Connection, message: dict[str, Any]) -> bool: ...
    async def send_to_user(self, user_id: str, type_: str, data: Any = None, *,
                           exclude: str | None = None, exclude_user: str | None = None,
                           droppable: bool = False, **fields: Any) -> None: ...
    async def send_to_room(self, room: str, type_: str, data: Any = None, *,
                           exclude: str | None = None, exclude_user: str | None = None,
                           droppable: bool = False, **fields: Any) -> None: ...
    async def broadcast(self, type_: str, data: Any = None, *, exclude: str | None = None,
                        exclude_user: str | None = None, **fields: Any) -> dict[str, Any]: ...
    # --- room messages and private messages (history, inbox)
    async def post_to_room(self, room: str, type_: str, data: Any, *,
                           sender: dict[str, Any] | None = None,
                           exclude: str | None = None) -> dict[str, Any]: ...
    async def send_private(self, to: str, data: Any, *, sender: dict[str, Any],
                           inbox_size: int, inbox_ttl: float,
                           exclude: str | None = None) -> dict[str, Any]: ...
    async def history(self, room: str, since: str | None, *, limit: int) -> HistoryPage: ...
    async def history_top(self, room: str) -> str: ...
    async def room_message(self, room: str, message_id: str) -> dict[str, Any] | None: ...
    async def inbox(self, user_id: str, since: str | None = None, *,
                    limit: int) -> list[dict[str, Any]]: ...
    async def inbox_ack(self, user_id: str, offset: str) -> None: ...
    async def conversation(self, user_id: str, peer: str, since: str | None, *,
                           limit: int) -> HistoryPage:
        """A page of ``user_id``'s private conversation with ``peer`` (either party's view is
        the same), as :meth:`history` pages a room's."""
        ...
    # --- rooms
    async def join(self, conn: Connection, room: str) -> int: ...
    async def leave(self, conn: Connection, room: str) -> int: ...
    async def room_members(self, room: str) -> list[str]: ...
    async def room_member_count(self, room: str) -> int:
        """How many users are in ``room`` (without listing them: check it against
        ``room_options(room).announces`` before ``room_members`` of a room that may be big)."""
        ...
    async def user_rooms(self, user_id: str) -> set[str]: ...
    def room_options(self, room: str) -> RoomOptions: ...
    # --- rules and settings of the core
    def permitted(self, user: User, action: str) -> bool:
        """Whether ``user`` has a role listed in ``permissions.<action>`` (``broadcast``,
        ``notify``, ...)."""
        ...
    @property
    def echo_to_sender(self) -> bool: ...
    def replay_fit(self, frames: list[dict[str, Any]]) -> int: ...
    # --- storage
    def store(self, namespace: str) -> Store: ...


class Plugin(Generic[C]):
    """Base class of every plugin, generic over its config model (``Plugin[PollConfig]``).
    Hooks default to no-ops; overridden hooks must be ``async def`` with the same parameters
    (checked at startup)."""

    name: ClassVar[str] = ""
    #: pydantic model (best a :class:`PluginConfig`) for this plugin's section
    Config: ClassVar[type[BaseModel] | None] = None
    #: where the section is: ``plugins.<name>`` by default, or a top-level key of its own
    section: ClassVar[str | None] = None
    #: server-to-client types this plugin sends, with the model of their ``data`` (or None)
    emits: ClassVar[Mapping[str, type[BaseModel] | None]] = {}
    #: error codes of this plugin's own (``code -> when``), listed in ``GET /api/protocol``;
    #: raise them as ``MessageRejected(code, message, details={...})``
    errors: ClassVar[Mapping[str, str]] = {}

    def __init__(self, config: C, node: NodeAPI) -> None:
        #: the validated ``Config`` instance (a dict when the plugin has no ``Config``)
        self.config: C = config
        #: the server: sending, rooms, history, presence, storage
        self.node = node
        #: a structlog logger bound with ``plugin=<name>``, for hooks outside a connection
        self.log: Any = structlog.get_logger(f"plugins.{self.name}").bind(plugin=self.name)

    @property
    def store(self) -> Store:
        """This plugin's own storage, shared by every node (namespace: its name)."""
        return self.node.store(self.name)

    async def on_startup(self) -> None:
        """Called once when the server starts, before it accepts connections. Raising here
        stops the server from starting, with the plugin named."""

    async def on_connect(self, ctx: "Context[C]") -> None:
        """Called for each connection after the ``connected`` frame was queued."""

    async def on_disconnect(self, ctx: "Context[C]") -> None:
        """Called for each connection after it closed and left its rooms (``ctx.conn.rooms``
        still names them)."""

    async def on_room_created(self, room: str) -> None:
        """Called on the node that created ``room`` (a client's join or the HTTP API)."""

    async def on_room_deleted(self, room: str) -> None:
        """Called on the node that deleted ``room`` (the HTTP API), after its history went."""

    async def on_history_expired(self, room: str) -> None:
        """Called when every kept message of ``room`` has expired (``history_ttl``): what a
        plugin keeps about those messages (reactions, read marks) can go too."""

    async def on_shutdown(self) -> None:
        """Called once while the server stops (also when a later plugin's on_startup failed)."""

    async def send_from_api(self, user_id: str, type_: str, data: dict[str, Any]) -> bool:
        """A service pushes ``type_``, one of this plugin's ``emits``, to ``user_id`` through
        ``POST /api/send``. Return True when the plugin delivered it itself (e.g. stored it
        first); the default, False, leaves it to the plain push. A pydantic ValidationError
        raised here answers the call with 400 naming the field under ``data``."""
        return False

    def stages(self) -> list[Stage]:
        """Pipeline stages this plugin adds, run after the built-in ones, before dispatch."""
        return []

    def client_settings(self) -> Mapping[str, Any]:
        """What clients may know of this plugin's settings (the demo page reads them, e.g.
        the typing plugin's ``timeout``); JSON-able, read at each request."""
        return {}


class Context(Generic[C]):
    """What a handler or a connection hook gets: the connection, the user, the frame (None in
    hooks), this plugin's config, state and logger, and the node's sending and room operations."""

    __slots__ = ("conn", "envelope", "node", "plugin", "_log")

    def __init__(self, conn: Connection, envelope: Envelope | None, node: NodeAPI,
                 plugin: "Plugin[C] | None" = None) -> None:
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
    def config(self) -> C:
        """This plugin's validated config section."""
        if self.plugin is None:
            raise RuntimeError("a Context without a plugin has no config")
        return self.plugin.config

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
        """Accept the client's frame. A handler that also sends the frame on (to a room, a
        user) sends it first and acks after, so that the ack carries its ``id``/``offset``;
        the sender's own other connections get their copy before this ack is queued. When the
        content filter masked the frame's text, the ack also carries ``content`` as it went to
        the others and ``filtered: true`` (PROTOCOL: the sender sees what the others saw)."""
        envelope = self.envelope
        if envelope is not None and envelope.filtered:
            data = {**(data or {})}
            data.setdefault("content", envelope.data.get("content"))
            data.setdefault("filtered", True)
        await self.reply("ack", data or {})

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close this connection (from a hook; a handler may also raise CloseConnection)."""
        self.conn.close(code, reason)

    # --- sending elsewhere ---
    # Frames carry ``from`` = this user unless ``sender=`` is given (``sender=None`` omits it).
    async def send_to_user(self, user_id: str, type_: str, data: Any = None, *,
                           exclude_self: bool = False, **fields: Any) -> None:
        """Send to every connection of ``user_id`` (on every node)."""
        exclude = self.conn.id if exclude_self else None
        fields.setdefault("sender", self.user.public())
        await self.node.send_to_user(user_id, type_, data, exclude=exclude, **fields)

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
        return self.node.replay_fit(frames)

    def room_options(self, room: str) -> RoomOptions:
        """The ``rooms`` config that applies to ``room`` (namespace options merged)."""
        return self.node.room_options(room)

