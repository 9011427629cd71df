"""Backend contracts. The hub and every plugin reach rooms, presence, history and the inbox
only through these, so the memory implementation and the Redis one are interchangeable.

Delivery follows Centrifuge: the hub knows only this node's connections; a publication goes to
the broker, which hands it to every node subscribed to its channel (this one included, at once
and without a round trip) through ``Deliver``. A node subscribes to a room's channel on its
first local member and unsubscribes after the last, to a user's while that user has a local
connection, and to the broadcast and control channels for its whole life: no node reads what
none of its connections needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol

#: a channel's kind; with its key (a room id, a user id, "" for "all" and "control") a channel
TargetKind = Literal["room", "user", "all", "control"]
#: seconds a user's ``last_seen`` is kept unless the presence plugin says otherwise (a week)
LAST_SEEN_TTL = 604800.0



@dataclass(frozen=True, slots=True)
class Route:
    """Who of the targets does not get a publication, and how hard to try. Travels with the
    payload to every node (the Redis broker serialises it)."""

    exclude: str | None = None  # a connection id (usually the sender's own)
    exclude_user: str | None = None  # a user none of whose connections get it
    droppable: bool = False  # a slow client drops it instead of being closed (typing)


DEFAULT_ROUTE = Route()


class Channels:
    """A set of channels, ``(kind, key)``, kept as a set of keys per kind: a key is the room's
    or the user's own string, so a channel costs a set slot and no tuple of its own (a user
    channel for every open connection, twice on the memory backend: the node's and the
    broker's)."""

    __slots__ = ("_keys",)

    def __init__(self) -> None:
        self._keys: dict[str, set[str]] = {}

    def add(self, kind: TargetKind, key: str) -> None:
        self._keys.setdefault(kind, set()).add(key)

    def discard(self, kind: TargetKind, key: str) -> None:
        keys = self._keys.get(kind)
        if keys is not None:
            keys.discard(key)

    def has(self, kind: TargetKind, key: str) -> bool:
        keys = self._keys.get(kind)
        return keys is not None and key in keys

    def __contains__(self, channel: tuple[TargetKind, str]) -> bool:
        return self.has(*channel)

    def clear(self) -> None:
        self._keys.clear()

#: Called by the broker on every node for each publication
Deliver = Callable[[TargetKind, str, bytes, Route], None]


class Broker(Protocol):
    async def start(self, deliver: Deliver) -> None: ...
    async def close(self) -> None: ...
    async def subscribe(self, kind: TargetKind, key: str) -> None:
        """Receive the channel's publications from now on (idempotent)."""
        ...
    async def unsubscribe(self, kind: TargetKind, key: str) -> None:
        """Stop receiving the channel (idempotent)."""
        ...
    async def publish(self, kind: TargetKind, key: str, payload: bytes,
                      route: Route = DEFAULT_ROUTE) -> None:
        """Hand ``payload`` (encoded once) to every subscribed node, this one first."""
        ...
    async def publish_kept(self, room: str, message: dict[str, Any], *, size: int, ttl: float,
                           route: Route = DEFAULT_ROUTE) -> str:
        """Keep ``message`` in ``room``'s history (:meth:`History.append`: it gets its
        ``offset``) and publish it to the room's channel, as one step: offsets are published in
        the order they were given, and nothing is published that was not kept. Returns the
        offset."""
        ...


@dataclass
class RoomInfo:
    id: str
    name: str
    description: str
    created_at: float
    max_members: int | None = None
    members: int = 0
    #: False for a room a client's join created: it is deleted when its last member leaves
    #: (its history stays, until history_ttl). Operators' rooms (API, default_rooms) persist.
    persistent: bool = True


class RoomStore(Protocol):
    """Which rooms exist and who is in them, cluster-wide (members are user ids)."""

    async def get(self, room: str) -> RoomInfo | None: ...
    async def create(self, room: str, *, name: str = "", description: str = "",
                     max_members: int | None = None,
                     persistent: bool = True) -> tuple[RoomInfo, bool]:
        """Create ``room`` unless it exists; returns (its info, True when created now)."""
        ...
    async def delete(self, room: str) -> bool: ...
    async def list(self) -> list[RoomInfo]: ...
    async def count(self) -> int: ...
    async def add_member(self, room: str, user_id: str, conn_id: str) -> int: ...
    async def remove_member(self, room: str, user_id: str, conn_id: str) -> tuple[int, bool]:
        """Returns (member count, True when that user has no connection left in the room).
        A room that is not ``persistent`` is deleted, in the same step, when it becomes empty."""
        ...
    async def members(self, room: str) -> list[str]: ...
    async def member_count(self, room: str) -> int: ...
    async def user_rooms(self, user_id: str) -> set[str]: ...


@dataclass(frozen=True, slots=True)
class UserPresence:
    """One user's presence as a :class:`PresenceStore` reports it (``presence.state``,
    ``GET /api/users/{id}/status``, ``GET /api/online``)."""

    user_id: str
    #: a connection is open, or the last one closed less than ``presence.grace_period`` ago
    online: bool
    #: ``online`` ``away`` ``busy`` ``offline`` as the user set it; ``online`` when never set,
    #: ``offline`` when not online
    status: str
    #: open connections, cluster-wide
    connections: int
    #: Unix seconds when the user's connections last dropped to none; None if never seen to,
    #: or longer ago than ``presence.last_seen_ttl``
    last_seen: float | None
    username: str | None = None
    #: Unix seconds the oldest open connection opened; None without one
    connected_at: float | None = None
    #: the extra fields of the user's status (``device``, ...)
    extra: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """``{user_id, online, status, last_seen, connections}`` plus the extra status fields."""
        return {**self.extra, "user_id": self.user_id, "online": self.online, "status": self.status,
                "last_seen": self.last_seen, "connections": self.connections}


class PresenceStore(Protocol):
    """Who is connected (cluster-wide) and the status each user set.

    A user is online from their first connection until ``mark_offline``; the core adds and
    removes connections, the presence plugin announces the changes: ``mark_online`` and
    ``mark_offline`` are atomic test-and-set operations, so that of several nodes exactly one
    announces each change and a reconnect on another node within the grace period announces
    nothing. Without the presence plugin a user is online exactly while connected.
    """

    async def add_connection(self, user_id: str, conn_id: str, info: dict[str, Any]) -> int:
        """Record an open connection (``info``: ``username``, ``connected_at``, ``node``).
        Returns how many connections the user now has (cluster-wide)."""
        ...
    async def remove_connection(self, user_id: str, conn_id: str) -> int:
        """Forget a connection; when it was the user's last, ``last_seen`` becomes now (and is
        forgotten ``presence.last_seen_ttl`` later). Returns how many connections the user has
        left. Nothing else is kept for a user with no connection."""
        ...
    async def connections(self, user_id: str) -> dict[str, dict[str, Any]]: ...
    async def online_users(self, *, limit: int | None = None, offset: int = 0) -> list[str]:
        """Online users' ids, in the order they came online (stable for paging)."""
        ...
    async def online_count(self) -> int: ...
    async def snapshot(self, user_ids: list[str]) -> list[UserPresence]:
        """The presence of each of ``user_ids``, in order (unknown users are offline)."""
        ...
    async def set_status(self, user_id: str, status: dict[str, Any]) -> None:
        """Store ``{"status": ..., **extra}`` for an online user (ignored for an offline one);
        it lasts until the user goes offline."""
        ...
    async def get_status(self, user_id: str) -> dict[str, Any] | None: ...
    async def last_seen(self, user_id: str) -> float | None: ...
    async def mark_online(self, user_id: str) -> bool:
        """Note that the user was announced online; True when they had not been (the caller
        announces it), False while they still are (a second connection, a quick reconnect)."""
        ...
    def set_last_seen_ttl(self, seconds: float) -> None:
        """How long ``last_seen`` is kept (default :data:`LAST_SEEN_TTL`); the presence plugin
        sets its ``presence.last_seen_ttl`` at startup."""
        ...
    async def mark_offline(self, user_id: str) -> float | None:
        """When the user has no connection left and was announced online: record them offline,
        drop their status and return their ``last_seen`` (the caller announces it). Otherwise
        (they reconnected meanwhile) change nothing and return None."""
        ...


@dataclass
class HistoryPage:
    messages: list[dict[str, Any]]
    #: no message between the ``since`` offset and the first of ``messages`` is missing: the
    #: offset is of this stream's epoch and nothing after it has expired or been pushed out
    recovered: bool
    offset: str  # the room's current offset (top of the stream)


class History(Protocol):
    """Each room's last messages, for catching up (``join`` with ``since``) and ``history``.

    Offsets are opaque strings, ``<epoch>:<seq>`` in the built-in backends: ``seq`` numbers a
    room's messages consecutively (1, 2, 3... in a new room) and never goes back within an
    epoch; the epoch changes whenever the numbering may have started over (a restart of the
    memory backend), so an offset of another epoch is never mistaken for a position in this one.

    A room none of whose messages is kept any more (expired, dropped, ``size`` 0) may be
    forgotten by the backend; its numbering then goes on from at least where it was, so an
    offset from before is answered with ``recovered`` False when messages may have been
    missed, never with a silent gap.
    """

    async def append(self, room: str, message: dict[str, Any], *, size: int,
                     ttl: float) -> str:
        """Give ``message`` the room's next offset (its ``offset`` field is set here) and keep
        it among the room's last ``size`` messages (0: keep none) for ``ttl`` seconds (0: until
        pushed out). Returns the offset."""
        ...
    async def since(self, room: str, offset: str | None, *, limit: int) -> HistoryPage:
        """Kept messages, oldest first. ``offset`` None: the latest ``limit``. Otherwise the
        first ``limit`` after ``offset``, ``recovered`` telling whether none between is missing;
        an offset of another epoch, malformed or beyond the top is unknown: every kept message
        (up to ``limit``) with ``recovered`` False."""
        ...
    async def current(self, room: str) -> str:
        """The offset of the room's last message (``<epoch>:0`` before the first in a new
        room)."""
        ...
    async def drop(self, room: str) -> None:
        """Forget the kept messages; offsets go on from where they were."""
        ...
    def on_expired(self, callback: Callable[[str], None]) -> None:
        """Have ``callback(room)`` called when every kept message of a room has expired (its
        history is empty now); not for :meth:`drop`."""
        ...


class Inbox(Protocol):
    """Each user's private messages that found no open connection, oldest first, at most
    ``size`` (the oldest go first) for ``ttl`` seconds, until the user acknowledges them.
    Offsets are opaque, of the same form as :class:`History`'s, and never reused in an epoch
    (not even after an emptied inbox was forgotten)."""

    async def push(self, user_id: str, message: dict[str, Any], *, size: int, ttl: float) -> str:
        """Store ``message``, setting its ``offset`` field; returns the offset."""
        ...
    async def fetch(self, user_id: str, since: str | None = None, *,
                    limit: int = 100) -> list[dict[str, Any]]:
        """Unacknowledged messages after ``since`` (all of them when None or of another epoch),
        oldest first, at most ``limit``."""
        ...
    async def ack(self, user_id: str, offset: str) -> None:
        """Drop the messages up to ``offset``. Acknowledging again, or an older offset, changes
        nothing; an offset beyond the newest message covers only the messages there are (later
        ones still arrive); one of another epoch or malformed is ignored."""
        ...


def pair_key(a: str, b: str) -> str:
    """The key of the conversation of users ``a`` and ``b`` (either order): the two ids
    sorted, the first one's length in front, so that no two pairs share a key whatever
    characters the ids hold."""
    low, high = (a, b) if a <= b else (b, a)
    return f"{len(low)}:{low}:{high}"


@dataclass(frozen=True, slots=True)
class ConversationEntry:
    """One line of a user's list of conversations (:meth:`Conversations.recent`)."""

    peer: str  # the other user's id (the user's own for notes to oneself)
    last_message: dict[str, Any]  # as it was kept, with its conversation ``offset``
    updated: float  # Unix seconds of the last message


class Conversations(Protocol):
    """Private conversations. Each pair of users' messages are kept in ``history``, a
    :class:`History` of its own (offsets numbered apart from the rooms' and the inbox's),
    under :func:`pair_key`; each user has a list of the conversations they had, the latest
    message of each, most recent first."""

    @property
    def history(self) -> History:
        """The pairs' messages, for reading: ``history.since(pair_key(a, b), ...)``."""
        ...

    async def append(self, sender: str, to: str, message: dict[str, Any], *, size: int,
                     ttl: float, keep: int) -> str:
        """Keep ``message`` in the conversation of ``sender`` and ``to`` as
        :meth:`History.append` does (it gets its ``offset``; ``size`` and ``ttl`` as there)
        and put that conversation at the top of both users' lists (one list for a note to
        oneself), each of which keeps its ``keep`` most recent conversations, each for ``ttl``
        seconds after its last message (0: until pushed out). With ``size`` 0 the message is
        numbered and nothing is kept, the lists included. Returns the offset."""
        ...

    async def recent(self, user_id: str, *, limit: int, ttl: float) -> list[ConversationEntry]:
        """The user's conversations, most recent first, at most ``limit``, none whose last
        message is older than ``ttl`` seconds (0: any age)."""
        ...


class Backend(Protocol):
    node_id: str
    #: the exceptions that mean "the backend cannot be reached now" (Redis down): a frame that
    #: needs it is answered ``UNAVAILABLE`` with ``retry_after``, and nobody is disconnected
    unavailable: tuple[type[BaseException], ...]
    broker: Broker
    rooms: RoomStore
    presence: PresenceStore
    history: History
    inbox: Inbox
    conversations: Conversations

    def store(self, namespace: str) -> "Store":
        """The generic store of one namespace (a plugin's name): what it keeps there is shared
        by every node of the backend and apart from every other namespace."""
        ...

    async def start(self, deliver: Deliver) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> bool: ...


class Store(Protocol):
    """A plugin's own storage, one namespace of the backend (``Backend.store(name)``), shared by
    every node: plain values, hashes (field -> value) and streams (entries appended in order,
    each with an id), each kept under a key. Values are anything JSON can hold.

    ``ttl`` is in seconds, 0 for no expiry. A value's or a hash's ``ttl`` counts from the last
    write that gave one. A stream's ``ttl`` applies to each entry: an entry is dropped ``ttl``
    seconds after it was added; ``maxlen`` keeps only the newest entries. Stream ids are
    ``<milliseconds>-<sequence>`` strings that grow within a key; compare them with
    :func:`stream_id_key`, not as text. The Redis backend maps these onto Redis strings,
    hashes and streams (XADD with MAXLEN and MINID)."""

    async def get(self, key: str) -> Any | None: ...
    async def set(self, key: str, value: Any, *, ttl: float = 0.0) -> None: ...
    async def delete(self, key: str) -> bool:
        """Forget ``key`` whatever it holds; True when it held something."""
        ...
    async def hash_get(self, key: str, field: str) -> Any | None: ...
    async def hash_set(self, key: str, field: str, value: Any, *, ttl: float = 0.0) -> None: ...
    async def hash_all(self, key: str) -> dict[str, Any]: ...
    async def hash_delete(self, key: str, *fields: str) -> int:
        """Remove ``fields``; returns how many were there."""
        ...
    async def stream_add(self, key: str, value: Any, *, maxlen: int, ttl: float = 0.0) -> str:
        """Append ``value``; returns its entry id."""
        ...
    async def stream_read(self, key: str, *, after: str | None = None,
                          limit: int = 100) -> list[tuple[str, Any]]:
        """Live entries oldest first, those after entry id ``after`` when given, at most
        ``limit``."""
        ...
    async def stream_delete(self, key: str, ids: list[str]) -> int:
        """Remove the entries with those ids; returns how many were there."""
        ...


def stream_id_key(entry_id: str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` as a pair that sorts in stream order."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
