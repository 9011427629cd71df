"""structlog set-up: JSON lines off a TTY, a readable console on one, for structlog's events and
the standard library's (aiohttp, asyncio, warnings) alike; and an access logger that writes the
path without its query string.

Tokens never reach a log line: the access log has no query string, secret-named fields are
redacted, and every rendered string (messages, exception text) has ``token=...``, ``Bearer ...``
and JWT-shaped values masked, in case a library quotes a request line.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import time
from typing import Any, MutableMapping, TextIO

import orjson
import structlog
from aiohttp import http_exceptions

from .config import LoggingConfig

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_SECRET_KEYS = frozenset({"token", "authorization", "api_key", "x-api-key", "secret", "password"})
REDACTED = "[redacted]"
_SECRET_TEXT = re.compile(
    r"(?P<prefix>token=|bearer\s+)[^\s&'\"\\]+"  # query parameter or Authorization value
    r"|eyJ[\w-]+\.[\w-]+(?:\.[\w-]*)?",  # a JWT (or the start of one), wherever it appears
    re.IGNORECASE,
)
_HANDLER_NAME = "switchboard"
#: structlog method -> level; a bound logger keeps its class, so the level is checked here, by a
#: processor, and ``set_level`` reaches loggers bound before it (each connection's)
_METHOD_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "msg": logging.INFO,
                  "warning": logging.WARNING, "warn": logging.WARNING, "error": logging.ERROR,
                  "exception": logging.ERROR, "critical": logging.CRITICAL,
                  "fatal": logging.CRITICAL}
_level = logging.INFO


#: what every text that could hold a token has in it; the masking runs only on those
_SECRET_HINT = re.compile(r"eyJ|token=|bearer", re.IGNORECASE)


def scrub(text: str) -> str:
    """``text`` with tokens masked."""
    if _SECRET_HINT.search(text) is None:
        return text
    return _SECRET_TEXT.sub(lambda m: (m.group("prefix") or "") + REDACTED, text)


@functools.lru_cache(maxsize=1024)  # field names: the few dozen the code writes
def _secret_key(key: str) -> bool:
    return key.lower() in _SECRET_KEYS


def _below_level(_: Any, method: str,
                 event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _METHOD_LEVELS.get(method, logging.INFO) < _level:
        raise structlog.DropEvent
    return event


def set_level(name: str) -> None:
    """Change the lowest level written, for every logger already made too (config reload)."""
    global _level
    _level = _LEVELS[name]
    logging.getLogger().setLevel(_level)


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in event.items():
        if _secret_key(key):
            event[key] = REDACTED
        elif isinstance(value, str) and _SECRET_HINT.search(value) is not None:
            event[key] = scrub(value)
    return event


def _json(event: Any, **_: Any) -> str:
    """JSON lines by orjson (a tenth of the standard library's cost); what it cannot encode is
    written as its ``repr``, as structlog's own renderer does."""
    return orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


_second = -1
_second_text = ""


def _timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``timestamp``: UTC, RFC 3339 with microseconds, as structlog's ``TimeStamper(fmt="iso")``
    writes it; the date and time are formatted once a second."""
    global _second, _second_text
    now = time.time()
    second = int(now)
    if second != _second:
        _second, _second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    event["timestamp"] = f"{_second_text}.{int((now - second) * 1_000_000):06d}Z"
    return event


class _SharedLogger:
    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def __call__(self, *_: Any) -> Any:
        return self.logger


class _ClientErrorsAsWarnings(logging.Filter):
    """aiohttp logs a malformed HTTP request at error level; it is the client's mistake."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno > logging.WARNING and isinstance(exc, http_exceptions.HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure_logging(config: LoggingConfig, stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library's root logger to write to ``stream``
    (stderr): JSON lines, or a console format when ``logging.format`` is ``console`` or
    ``auto`` on a TTY."""
    stream = stream or sys.stderr
    fmt = config.format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=True) if fmt == "console"
                     else structlog.processors.JSONRenderer(serializer=_json))
    # exceptions become text here, before the scrub; the console renderer then prints that text
    # instead of a rich traceback with local variables (where a token would show)
    finish = [structlog.processors.format_exc_info, _redact, renderer]
    structlog.configure(
        processors=[
            _below_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _timestamp,
            *finish,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        # one writer for every logger (a bound logger per connection would otherwise make its
        # own on first use, and look up the stream's lock again)
        logger_factory=_SharedLogger(structlog.PrintLogger(stream)),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(_ClientErrorsAsWarnings())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finish],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(config.level)
    logging.captureWarnings(True)
