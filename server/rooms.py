"""What applies to a room: :class:`RoomOptions`, worked out from the ``rooms`` config section
(its namespace's overrides on the defaults), and what a room name (or a user id as a target)
may be. A leaf module, so the plugin API can name them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .errors import MessageRejected
from .protocol.codes import ErrorCode

#: longest room name or user id accepted as a target
MAX_NAME_LENGTH = 255
#: most rooms whose options an :class:`OptionsCache` remembers before starting over
ROOM_OPTIONS_KEPT = 4096


@dataclass(frozen=True, slots=True)
class RoomOptions:
    history_size: int
    history_ttl: float
    presence: bool
    join_leave_events: bool
    client_publish: bool
    max_members: int
    allowed_roles: tuple[str, ...]
    #: a room with more members than this is too large for its membership changes to be told
    #: one by one (``user_joined``/``user_left``, the presence plugin's ``user_status`` and
    #: ``presence``); 0 = no limit
    announce_max_members: int = 0

    def announces(self, members: int) -> bool:
        """Whether a membership change is told to the others in a room of ``members`` members
        (counting the user who joins, leaves, comes, goes or sets a status):
        ``announce_max_members`` or fewer, or that limit is 0."""
        limit = self.announce_max_members
        return not limit or members <= limit


def check_name(field: str, value: str) -> None:
    """A room name or a ``to`` user id: 1-255 printable characters, no surrounding spaces;
    ``INVALID_MESSAGE`` otherwise."""
    if not value or len(value) > MAX_NAME_LENGTH or value != value.strip() or not value.isprintable():
        raise MessageRejected(ErrorCode.INVALID_MESSAGE,
                              f"'{field}' must be 1-{MAX_NAME_LENGTH} printable characters without "
                              f"leading or trailing spaces, got {value[:40]!r}")


class _OptionsSource(Protocol):
    def options(self, room: str) -> RoomOptions: ...


class OptionsCache:
    """Each room's options as ``source.options(room)`` works them out (``source``: a config's
    ``rooms`` section), once per room for as long as the same section is given (a reload
    replaces it): every room message needs them. At most :data:`ROOM_OPTIONS_KEPT` rooms are
    remembered before it starts over."""

    def __init__(self) -> None:
        self._options: dict[str, RoomOptions] = {}
        self._source: _OptionsSource | None = None  # the section they were worked out from

    def get(self, source: _OptionsSource, room: str) -> RoomOptions:
        cache = self._options
        if source is not self._source:
            cache.clear()
            self._source = source
        opts = cache.get(room)
        if opts is None:
            if len(cache) >= ROOM_OPTIONS_KEPT:
                cache.clear()
            opts = cache[room] = source.options(room)
        return opts
