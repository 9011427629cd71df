"""One exception root and its children. A leaf module: imports nothing from the project."""

from __future__ import annotations

from typing import Any


class SwitchboardError(Exception):
    """Root of every error Switchboard raises on purpose."""


class ConfigError(SwitchboardError):
    """A config that cannot be used; ``errors`` lists each problem with its key path."""

    def __init__(self, errors: list[str], warnings: list[str] | None = None) -> None:
        self.errors = list(errors)
        self.warnings = list(warnings or [])
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.errors))


class PluginError(SwitchboardError):
    """A plugin that cannot be registered; the message names the plugin and the type."""


class AuthError(SwitchboardError):
    """A token that is missing, invalid, expired, for another audience or issuer, or revoked."""


class MessageRejected(SwitchboardError):
    """Raised by a pipeline stage or handler: the client gets an ``error`` frame with ``code``
    (the core's, or one its plugin declares in ``Plugin.errors``) and ``message``, plus
    ``retry_after`` and ``details`` (any JSON object: which field, the limit, the existing
    item...) when given; the connection stays open."""

    def __init__(self, code: str, message: str, *, retry_after: float | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.details = details


class CloseConnection(SwitchboardError):
    """Raised by a stage or handler to close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
