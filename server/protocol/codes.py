"""The catalogue of error codes and close codes (PROTOCOL.md §4), with the reconnect rule.

One place says what each code means and what a client does after a close: the server closes
with these, ``GET /api/protocol`` publishes them (``close_codes``, ``error_codes``), the Python
client (``server/tools/client.py``) follows :func:`close_action`, and ``static/switchboard.js``
carries a generated copy (:func:`js_catalogue`) that a test holds against this one.
A leaf module: it imports nothing of the project.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Literal


class ErrorCode:
    INVALID_JSON = "INVALID_JSON"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
    MESSAGE_TOO_LONG = "MESSAGE_TOO_LONG"
    RATE_LIMITED = "RATE_LIMITED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    NOT_IN_ROOM = "NOT_IN_ROOM"
    ROOM_FULL = "ROOM_FULL"
    ROOM_LIMIT_REACHED = "ROOM_LIMIT_REACHED"
    MESSAGE_FILTERED = "MESSAGE_FILTERED"
    UNSUPPORTED_FRAME = "UNSUPPORTED_FRAME"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    UNAVAILABLE = "UNAVAILABLE"
    # refusals before the upgrade (HTTP bodies)
    IP_FORBIDDEN = "IP_FORBIDDEN"
    ORIGIN_FORBIDDEN = "ORIGIN_FORBIDDEN"
    UNAUTHORIZED = "UNAUTHORIZED"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    SERVER_BUSY = "SERVER_BUSY"


#: the core's error codes and when each is sent; plugins add their own (``Plugin.errors``)
ERROR_CODES: dict[str, str] = {
    ErrorCode.INVALID_JSON: "the frame is not a JSON object",
    ErrorCode.INVALID_MESSAGE: "schema violation: missing type, wrong field types, bad data for the type",
    ErrorCode.UNKNOWN_MESSAGE_TYPE: "no plugin owns the type",
    ErrorCode.MESSAGE_TOO_LONG: "data.content over messages.max_message_length",
    ErrorCode.RATE_LIMITED: "over the rate limit; retry_after in seconds",
    ErrorCode.FORBIDDEN: "the user's roles do not allow this type or target",
    ErrorCode.NOT_FOUND: "unknown room or user where one must exist",
    ErrorCode.NOT_IN_ROOM: "a room frame to a room the sender has not joined",
    ErrorCode.ROOM_FULL: "the room has its maximum of members",
    ErrorCode.ROOM_LIMIT_REACHED: "the server's room count or the user's room cap is reached",
    ErrorCode.MESSAGE_FILTERED: "rejected by the message filter",
    ErrorCode.UNSUPPORTED_FRAME: "a binary frame where none is accepted",
    ErrorCode.INTERNAL_ERROR: "a plugin raised; logged, the connection stays open",
    ErrorCode.UNAVAILABLE: "the backend is unreachable and the frame needs it; retry_after in seconds",
    ErrorCode.UNAUTHORIZED: "no valid token (before the upgrade, in the first frame, in refresh)",
    ErrorCode.IP_FORBIDDEN: "upgrade refused: the client address is not allowed",
    ErrorCode.ORIGIN_FORBIDDEN: "upgrade refused: the Origin is not allowed",
    ErrorCode.TOO_MANY_CONNECTIONS: "upgrade refused: a connection cap is reached",
    ErrorCode.SERVER_BUSY: "upgrade refused: the server is draining or full",
}


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    ABNORMAL = 1006  # never sent: what a client sees when the connection dropped
    INVALID_UTF8 = 1007
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    TOKEN_EXPIRED = 4001
    SLOW_CONSUMER = 4008
    HEARTBEAT_TIMEOUT = 4010
    RATE_LIMITED = 4013
    AUTH_FAILED = 4500
    TOO_MANY_INVALID = 4501
    KICKED = 4503
    FORBIDDEN = 4507


#: ``reconnect``: after a backoff (doubling per attempt, with jitter; each client has its own
#: steps); ``token``: get a new token, then reconnect;
#: ``stop``: do not reconnect until something changes
Action = Literal["reconnect", "token", "stop"]


@dataclass(frozen=True, slots=True)
class CloseInfo:
    code: int
    name: str
    action: Action
    meaning: str
    #: the first backoff step in seconds of the terminal client (doubling up to MAX_BACKOFF)
    backoff: float = 0.25

    @property
    def reconnect(self) -> bool:
        return self.action != "stop"


def _close(code: "CloseCode", action: Action, meaning: str, backoff: float = 0.25) -> CloseInfo:
    return CloseInfo(int(code), code.name, action, meaning, backoff)


CLOSE_CODES: tuple[CloseInfo, ...] = (
    _close(CloseCode.NORMAL, "stop", "normal closure"),
    _close(CloseCode.GOING_AWAY, "reconnect", "server going away"),
    _close(CloseCode.PROTOCOL_ERROR, "stop", "protocol error"),
    _close(CloseCode.UNSUPPORTED_DATA, "stop", "unsupported data"),
    _close(CloseCode.ABNORMAL, "reconnect", "the connection dropped (never sent)"),
    _close(CloseCode.INVALID_UTF8, "stop", "invalid UTF-8"),
    _close(CloseCode.MESSAGE_TOO_BIG, "stop", "frame too big"),
    _close(CloseCode.INTERNAL_ERROR, "reconnect", "server error"),
    _close(CloseCode.TRY_AGAIN_LATER, "reconnect", "server overloaded", backoff=2.0),
    _close(CloseCode.TOKEN_EXPIRED, "token", "token expired"),
    _close(CloseCode.SLOW_CONSUMER, "reconnect", "too slow to read"),
    _close(CloseCode.HEARTBEAT_TIMEOUT, "reconnect", "heartbeat timeout"),
    _close(CloseCode.RATE_LIMITED, "reconnect", "rate limited"),
    _close(CloseCode.AUTH_FAILED, "stop", "authentication failed"),
    _close(CloseCode.TOO_MANY_INVALID, "stop", "too many invalid frames"),
    _close(CloseCode.KICKED, "stop", "kicked or token revoked"),
    _close(CloseCode.FORBIDDEN, "stop", "forbidden"),
)
#: codes not in the catalogue: 4000-4499 reconnect, 4500-4999 stop, any other reconnects
CLOSE_RANGES: tuple[tuple[int, int, Action], ...] = ((4000, 4499, "reconnect"), (4500, 4999, "stop"))
DEFAULT_ACTION: Action = "reconnect"
MAX_BACKOFF = 10.0
_BY_CODE = {c.code: c for c in CLOSE_CODES}


def close_info(code: int | None) -> CloseInfo | None:
    return _BY_CODE.get(code) if code is not None else None


def close_action(code: int | None) -> Action:
    """What a client does after the server closed with ``code`` (None: the network dropped)."""
    info = close_info(code)
    if info is not None:
        return info.action
    if code is not None:
        for low, high, action in CLOSE_RANGES:
            if low <= code <= high:
                return action
    return DEFAULT_ACTION


def close_backoff(code: int | None) -> float:
    """The first backoff step after ``code``, in seconds."""
    info = close_info(code)
    return info.backoff if info is not None else 0.25


def close_catalogue() -> dict[str, object]:
    """The close codes as ``GET /api/protocol`` publishes them."""
    return {
        "codes": [{"code": c.code, "name": c.name, "action": c.action, "reconnect": c.reconnect,
                   "meaning": c.meaning, "backoff": c.backoff} for c in CLOSE_CODES],
        "ranges": [{"from": low, "to": high, "action": action} for low, high, action in CLOSE_RANGES],
        "default": DEFAULT_ACTION,
        "max_backoff": MAX_BACKOFF,
    }


JS_BEGIN = "// BEGIN close codes: generated by `python -m server.protocol`; do not edit"
JS_END = "// END close codes"


def js_catalogue() -> str:
    """The block ``static/switchboard.js`` carries between :data:`JS_BEGIN` and :data:`JS_END`."""
    lines = [JS_BEGIN, "const CLOSE_CODES = {"]
    for c in CLOSE_CODES:
        lines.append(f'  {c.code}: {{ name: "{c.name}", action: "{c.action}", backoff: {c.backoff:g}, '
                     f'meaning: "{c.meaning}" }},')
    lines.append("};")
    ranges = ", ".join(f'[{low}, {high}, "{action}"]' for low, high, action in CLOSE_RANGES)
    lines.append(f"const CLOSE_RANGES = [{ranges}];")
    lines.append(f'const CLOSE_DEFAULT = "{DEFAULT_ACTION}";')
    lines.append(f"const MAX_BACKOFF_S = {MAX_BACKOFF:g};")
    lines.append(JS_END)
    return "\n".join(lines)
