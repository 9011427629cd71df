"""Who a connection is: :class:`User`, from its JWT claims. A leaf module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
