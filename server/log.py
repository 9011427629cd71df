"""structlog set-up: JSON lines off a TTY, a readable console on one, for structlog's events and
the standard library's (aiohttp, asyncio, warnings) alike; and an access logger that writes the
path without its query string.

Tokens never reach a log line: the access log has no query string, secret-named fields are
redacted, and every rendered string (messages, exception text) has ``token=...``, ``Bearer ...``
and JWT-shaped values masked, in case a library quotes a request line.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import functools
import logging
import re
import sys
import threading
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
_sink: "LineSink | None" = None


def scrub(text: str) -> str:
    """``text`` with tokens masked. The pattern runs only on a text with what every token's
    text has in it (lower case: ``eyj``, ``token=``, ``bearer``): the test costs half a
    microsecond on a log line, a case-blind pattern fifteen times that."""
    low = text.lower()
    if "eyj" not in low and "token=" not in low and "bearer" not in low:
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


_Emitting: Any = structlog.make_filtering_bound_logger(logging.DEBUG)


def _gated(method: str, level: int) -> Any:
    emit = getattr(_Emitting, method)

    def meth(self: Any, event: str, *args: Any, **kw: Any) -> Any:
        if level < _level:
            return None  # below the level: returns at once (the processor raises DropEvent)
        return emit(self, event, *args, **kw)
    meth.__name__ = method
    return meth


class _Levelled(_Emitting):  # type: ignore[misc]
    """structlog's bound logger, each level's method checking the level of now (``set_level``,
    a reload) before anything else: a line below it costs a comparison, not a trip through the
    processors to a ``DropEvent`` (an exception per ``debug`` line). ``log`` and the ``a*``
    methods are structlog's, filtered by ``_below_level``."""

    debug = _gated("debug", logging.DEBUG)
    info = msg = _gated("info", logging.INFO)
    warning = warn = _gated("warning", logging.WARNING)
    error = _gated("error", logging.ERROR)
    exception = _gated("exception", logging.ERROR)
    critical = fatal = _gated("critical", logging.CRITICAL)

    def is_enabled_for(self, level: int) -> bool:
        return level >= _level

    def get_effective_level(self) -> int:
        return _level


def set_level(name: str) -> None:
    """Change the lowest level written, for every logger already made too (config reload)."""
    global _level
    _level = _LEVELS[name]
    logging.getLogger().setLevel(_level)


def _redact_keys(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event:
        if _secret_key(key):
            event[key] = REDACTED
    return event


def _scrub_line(_: Any, __: str, line: Any) -> Any:
    """After the renderer: the whole line, every value and exception text in it, at once (JSON
    escaping keeps the three hints; the pattern stops at a quote or backslash)."""
    return scrub(line) if isinstance(line, str) else line


def _json_line(logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
    """``_stamp``, ``_exc_text``, ``_redact_keys``, the JSON renderer and ``_scrub_line``, in
    that order, as one processor."""
    stamped = _exc_text(logger, method, _stamp(logger, method, event))
    return scrub(_json(_redact_keys(logger, method, stamped)))


def _exc_text(logger: Any, method: str,
              event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog's ``format_exc_info``, called only for an event that carries ``exc_info``."""
    if "exc_info" in event:
        return structlog.processors.format_exc_info(logger, method, event)
    return event


def _json(event: Any, **_: Any) -> str:
    """JSON lines by orjson (a tenth of the standard library's cost); what it cannot encode is
    written as its ``repr``, as structlog's own renderer does."""
    return orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


_second = -1
_second_text = ""


#: structlog method -> the ``level`` written (structlog's ``add_log_level`` names)
_LEVEL_NAMES = {"warn": "warning", "exception": "error"}


#: fields for every line logged in this context (a worker's: ``worker``), whichever logger
#: writes it, aiohttp's included
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "switchboard_log_context", default=None)
#: the connection whose task this is (``bind_connection``): its ``conn_id`` and ``user_id``
_connection: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "switchboard_log_connection", default=None)


def bind_context(**fields: Any) -> contextvars.Token[dict[str, Any] | None]:
    """Add ``fields`` to every line logged from here on in this task (and the tasks it starts);
    ``reset_context`` with the returned token takes them off."""
    current = _context.get()
    return _context.set({**current, **fields} if current else fields)


def reset_context(token: contextvars.Token[dict[str, Any] | None]) -> None:
    _context.reset(token)


def bind_connection(conn: Any) -> None:
    """Give every line logged from here on in this task (the WebSocket handler's) the
    ``conn_id`` and ``user_id`` of ``conn`` (anything with ``id`` and ``user.id``), whichever
    logger writes it, until ``unbind_connection``. The connection itself is kept, not a mapping
    built for it and a token to undo it (those were 0.24 KiB per idle connection); structlog's
    ``bind_contextvars`` sets one variable per field and its merge walks the whole context, a
    twentieth of a connect storm's time."""
    _connection.set(conn)


def unbind_connection() -> None:
    """The lines logged from here on in this task belong to no connection."""
    _connection.set(None)


def in_connection_task(conn: Any) -> bool:
    """Whether lines logged here get ``conn``'s fields already: bound here (``bind_connection``)
    and merged by the chain structlog runs now (ours, not a test's or an embedding app's)."""
    return _connection.get() is conn and structlog.get_config()["processors"] is _chain


#: the processors ``configure_logging`` gave structlog (they merge the context's fields)
_chain: list[Any] | None = None


def merge_context(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: the fields of ``bind_context`` and ``bind_connection``, as
    structlog's ``merge_contextvars`` does for its own (the configured chains run it; give it to
    ``structlog.testing.capture_logs(processors=[merge_context])`` to see them in a test)."""
    fields = _context.get()
    if fields:
        for key, value in fields.items():
            event.setdefault(key, value)
    conn = _connection.get()
    if conn is not None:
        event.setdefault("conn_id", conn.id)
        event.setdefault("user_id", conn.user.id)
    return event


def _stamp(_: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The context's fields (``bind_context``, ``bind_connection``), ``level``, then
    ``timestamp``: UTC, RFC 3339 with microseconds, as structlog's ``add_log_level`` and ``TimeStamper(fmt="iso")`` write
    them, in one step; the date and time are formatted once a second."""
    global _second, _second_text
    merge_context(_, method, event)
    event["level"] = _LEVEL_NAMES.get(method, method)
    now = time.time()
    second = int(now)
    if second != _second:
        _second, _second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    event["timestamp"] = f"{_second_text}.{int((now - second) * 1_000_000):06d}Z"
    return event


#: a pipe takes a write of up to this many bytes whole (POSIX PIPE_BUF): the workers of
#: ``--workers`` share stderr, so no write may carry more than this unless it is one long line
_WHOLE_WRITE = 4096
#: pending lines are written at once past this many characters (a turn that logs a lot)
_MOST_PENDING = 65536


class LineSink:
    """Where every log line goes: one ``write()`` per loop turn for all the lines of that turn
    (in chunks a pipe never splits), not one or two per line (``print`` writes a line and its
    newline apart on an unbuffered stderr, e.g. ``PYTHONUNBUFFERED=1``). A connect storm logs
    three lines a connection; their writes were a tenth of its CPU time. Lines logged outside a
    running loop (start-up, another thread, the CLI) are written at once; what is pending when
    the process exits is written by an ``atexit`` hook. A line waits at most one loop turn."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._pending: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        #: the loop whose next turn flushes, and its thread (None: nothing scheduled)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    def write(self, line: str) -> None:
        with self._lock:
            self._pending.append(line)
            self._size += len(line) + 1
            if self._size < _MOST_PENDING:
                loop = self._loop
                if loop is not None and loop.is_running() and self._thread == threading.get_ident():
                    return  # this turn's flush is scheduled already
                try:  # once a turn: on Python 3.11 it costs a getpid() system call
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    loop = None
                if loop is not None:
                    self._loop, self._thread = loop, threading.get_ident()
                    loop.call_soon(self.flush)
                    return
        self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._pending, self._size, self._loop = self._pending, [], 0, None
            if not lines:
                return
            chunk: list[str] = []
            size = 0
            try:
                for line in lines:
                    if chunk and size + len(line) + 1 > _WHOLE_WRITE:
                        self._write(chunk)
                        chunk, size = [], 0
                    chunk.append(line)
                    size += len(line) + 1
                self._write(chunk)
            except (OSError, ValueError):  # stderr closed or gone: nowhere to say it
                pass

    def _write(self, lines: list[str]) -> None:
        lines.append("")
        self.stream.write("\n".join(lines))
        self.stream.flush()


def flush_logs() -> None:
    """Write the pending lines now: before telling another process something that a line logged
    before it should precede (``server_listening`` before a worker's ``ready``), and at exit."""
    if _sink is not None:
        _sink.flush()


atexit.register(flush_logs)


class _SinkLogger:
    """structlog's logger: every method writes the rendered line to the sink."""

    def __init__(self, sink: LineSink) -> None:
        self.sink = sink
        self.msg = self.log = self.debug = self.info = self.warn = self.warning = sink.write
        self.err = self.error = self.critical = self.exception = self.fatal = sink.write


class _SinkHandler(logging.Handler):
    """The standard library's records (aiohttp, asyncio, warnings), through the same sink so
    they keep their order among structlog's lines."""

    def __init__(self, sink: LineSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write(self.format(record))
        except Exception:  # noqa: BLE001 (logging's own contract: report, never raise)
            self.handleError(record)


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
    global _sink
    if _sink is not None:
        _sink.flush()
    sink = _sink = LineSink(stream)
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=True) if fmt == "console"
                     else structlog.processors.JSONRenderer(serializer=_json))
    # exceptions become text before the renderer, which the scrub then masks along with every
    # other value; the console renderer prints that text instead of a rich traceback with local
    # variables (where a token would show)
    finish = [_redact_keys, renderer, _scrub_line]
    global _chain
    _chain = [
        _below_level,
        structlog.contextvars.merge_contextvars,
        # JSON: the steps below in one call (three lines a connection in a connect storm)
        *([_json_line] if fmt == "json" else [_stamp, _exc_text, *finish]),
    ]
    structlog.configure(
        processors=_chain,
        wrapper_class=_Levelled,
        # one writer for every logger (a bound logger per connection would otherwise make its
        # own on first use, and look up the stream's lock again)
        logger_factory=_SharedLogger(_SinkLogger(sink)),
        cache_logger_on_first_use=False,
    )
    handler = _SinkHandler(sink)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(_ClientErrorsAsWarnings())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            merge_context,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, *finish],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(config.level)
    logging.captureWarnings(True)
