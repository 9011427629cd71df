"""Envelope encoding and decoding, error codes and close codes (PROTOCOL.md §2 and §4).

A leaf module: the per-message hot path, so it stays small and allocation-light.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import IntEnum
from typing import Any

import orjson

from .errors import MessageRejected


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
    # refusals before the upgrade (HTTP bodies)
    IP_FORBIDDEN = "IP_FORBIDDEN"
    ORIGIN_FORBIDDEN = "ORIGIN_FORBIDDEN"
    UNAUTHORIZED = "UNAUTHORIZED"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    SERVER_BUSY = "SERVER_BUSY"


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
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


_pid_tag = f"{os.getpid():x}"
_counter = itertools.count(1)
_boot = f"{int(time.time() * 1000):x}"


def new_id() -> str:
    """A server-assigned id: unique within the node and across restarts (boot time + counter)."""
    return f"{_boot}-{_pid_tag}-{next(_counter):x}"


def now_ts() -> str:
    """RFC 3339 UTC with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Envelope:
    """A validated client frame. ``data`` is the raw payload until the registry validates it."""

    type: str
    id: str | None = None
    room: str | None = None
    to: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    payload: Any = None  # the plugin-schema-validated ``data`` (a pydantic model or dict)


def decode(text: str | bytes) -> Envelope:
    """Decode one client text frame into an Envelope or raise MessageRejected."""
    try:
        obj = orjson.loads(text)
    except Exception:  # orjson raises JSONDecodeError for all of: syntax, depth, NaN, huge ints
        raise MessageRejected(ErrorCode.INVALID_JSON, "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise MessageRejected(ErrorCode.INVALID_JSON, "frame is not a JSON object")
    type_ = obj.get("type")
    if not isinstance(type_, str) or not type_:
        raise MessageRejected(ErrorCode.INVALID_MESSAGE, "'type' is required and must be a string")
    fid = obj.get("id")
    if fid is not None and not isinstance(fid, str):
        if isinstance(fid, int) and not isinstance(fid, bool):
            fid = str(fid)
        else:
            raise MessageRejected(ErrorCode.INVALID_MESSAGE, "'id' must be a string")
    room = obj.get("room")
    if room is not None and (not isinstance(room, str) or not room):
        raise MessageRejected(ErrorCode.INVALID_MESSAGE, "'room' must be a non-empty string", )
    to = obj.get("to")
    if to is not None and (not isinstance(to, str) or not to):
        raise MessageRejected(ErrorCode.INVALID_MESSAGE, "'to' must be a non-empty string")
    data = obj.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise MessageRejected(ErrorCode.INVALID_MESSAGE, "'data' must be an object")
    return Envelope(type_, fid, room, to, data)


def frame(
    type_: str,
    data: Any = None,
    *,
    room: str | None = None,
    to: str | None = None,
    sender: dict[str, Any] | None = None,
    reply_to: str | None = None,
    offset: str | None = None,
    id: str | None = None,
) -> dict[str, Any]:
    """Build a server-to-client frame as a dict (the order of keys is the wire order)."""
    out: dict[str, Any] = {"type": type_, "id": id or new_id(), "ts": now_ts()}
    if room is not None:
        out["room"] = room
    if to is not None:
        out["to"] = to
    if sender is not None:
        out["from"] = sender
    if offset is not None:
        out["offset"] = offset
    if reply_to is not None:
        out["reply_to"] = reply_to
    out["data"] = {} if data is None else data
    return out


def encode(obj: Any) -> bytes:
    """Encode once; the bytes go to every recipient unchanged."""
    return orjson.dumps(obj, default=_default)


def _default(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    raise TypeError(f"cannot encode {type(obj).__name__}")


def error_frame(code: str, message: str, *, reply_to: str | None = None,
                retry_after: float | None = None) -> bytes:
    data: dict[str, Any] = {"code": code, "message": message}
    if retry_after is not None:
        data["retry_after"] = round(retry_after, 3)
    return encode(frame("error", data, reply_to=reply_to))
