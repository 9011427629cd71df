"""structlog set-up: JSON lines off a TTY, a readable console on one; and an access logger that
writes the path without its query string, so a ``?token=`` never reaches a log line."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from .config import LoggingConfig

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_SECRET_KEYS = {"token", "authorization", "api_key", "x-api-key", "secret", "password"}


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
    return event


def configure_logging(config: LoggingConfig, stream: Any = None) -> None:
    stream = stream or sys.stderr
    fmt = config.format
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=True) if fmt == "console"
                     else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info if fmt == "json" else (lambda _, __, e: e),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[config.level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # aiohttp's own loggers (server errors) go through the standard library
    logging.basicConfig(level=_LEVELS[config.level], stream=stream, format="%(message)s")


class AccessLogger(AbstractAccessLogger):
    """Logs method, path (never the query string), status, size and duration."""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._log = structlog.get_logger("server.access")

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self._log.info(
            "http_request", method=request.method, path=request.path, status=response.status,
            bytes=response.body_length, duration=round(time, 4), remote=request.remote,
        )

    @property
    def enabled(self) -> bool:
        return True
