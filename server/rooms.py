"""What applies to a room: :class:`RoomOptions`, worked out from the ``rooms`` config section
(its namespace's overrides on the defaults). A leaf module, so the plugin API can name it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RoomOptions:
    history_size: int
    history_ttl: float
    presence: bool
    join_leave_events: bool
    client_publish: bool
    max_members: int
    allowed_roles: tuple[str, ...]
