"""Envelope encoding and decoding (PROTOCOL.md §2): client frames in, server frames out.

A leaf module: the per-message hot path, so it stays small and allocation-light.
"""

from __future__ import annotations

import itertools
import struct
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import MessageRejected
from .codes import ErrorCode


_counter = itertools.count(1)
_id_prefix = f"{int(time.time() * 1000):x}-{os.getpid():x}-"  # boot time and process


def new_id() -> str:
    """A server-assigned id: unique within the node and across restarts (boot time + counter)."""
    return f"{_id_prefix}{next(_counter):x}"


_ts_ms = -1  # the millisecond _ts_text stands for
_ts_text = ""


def now_ts() -> str:
    """RFC 3339 UTC with milliseconds (``2026-01-31T12:00:00.123Z``), formatted once per
    millisecond: every frame stamps one."""
    global _ts_ms, _ts_text
    ms = time.time_ns() // 1_000_000
    if ms != _ts_ms:
        seconds, millis = divmod(ms, 1000)
        _ts_text = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"
        _ts_ms = ms
    return _ts_text


@dataclass(slots=True)
class Envelope:
    """A validated client frame. ``data`` is the raw payload until the registry validates it."""

    type: str
    id: str | None = None
    room: str | None = None
    to: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    payload: Any = None  # the plugin-schema-validated ``data`` (a pydantic model or dict)
    #: the content filter masked ``data.content`` (the ack then says so, with the text sent on)
    filtered: bool = False


# orjson keeps integers in int64..uint64 exact and silently turns wider ones into floats, of
# magnitude 2**63 or more: only a frame holding such a float is parsed a second time, exactly.
_WIDE = float(2**63)
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number",
               float: "a number", bool: "a boolean", type(None): "null"}


def _exact_int(text: str) -> int:
    if len(text) > 21 or not _INT_MIN <= (value := int(text)) <= _INT_MAX:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits does not fit in 64 bits")
    return value


def _holds_wide_float(obj: Any) -> bool:
    """Whether a decoded document holds a float of magnitude 2**63 or more anywhere: a walk
    over its values, cheaper than scanning the text for long runs of digits."""
    stack = [obj]
    pop, push = stack.pop, stack.extend
    while stack:
        value = pop()
        kind = type(value)
        if kind is dict:
            push(value.values())
        elif kind is list:
            push(value)
        elif kind is float and not -_WIDE < value < _WIDE:
            return True
    return False


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def parse_json(text: str) -> dict[str, Any]:
    """Decode one client text frame into a JSON object, or raise ``INVALID_JSON``.

    Every way a frame can fail maps to ``INVALID_JSON``: syntax, NaN/Infinity, numbers out of
    the double range (1e999, a 5000-digit integer), nesting deeper than 1024 levels, lone
    surrogates, integers outside int64..uint64 (which orjson would round to a float), and a
    valid document that is not an object.
    """
    try:
        obj = orjson.loads(text)
        if _holds_wide_float(obj):
            json.loads(text, parse_int=_exact_int)
    except RecursionError:
        raise MessageRejected(ErrorCode.INVALID_JSON,
                              "frame is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # orjson.JSONDecodeError is one
        raise MessageRejected(ErrorCode.INVALID_JSON, f"frame is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MessageRejected(ErrorCode.INVALID_JSON,
                              f"frame must be a JSON object, got {json_type(obj)}")
    return obj


def frame_id(obj: dict[str, Any]) -> str | None:
    """The client's ``id`` of a decoded frame, for ``reply_to``, even when the rest is invalid."""
    fid = obj.get("id")
    return fid if isinstance(fid, str) else None


def _not_text(key: str, value: Any) -> MessageRejected:
    got = "an empty string" if value == "" else json_type(value)
    return MessageRejected(ErrorCode.INVALID_MESSAGE, f"'{key}' must be a non-empty string, got {got}")


def _text(obj: dict[str, Any], key: str) -> str | None:
    """An optional string field: absent or null is None; anything but a non-empty string is
    ``INVALID_MESSAGE``."""
    value = obj.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise _not_text(key, value)
    return value


def envelope(obj: dict[str, Any]) -> Envelope:
    """Check the envelope fields of a decoded frame (PROTOCOL §2), or raise ``INVALID_MESSAGE``.
    Unknown top-level fields are ignored; a null optional field counts as absent."""
    type_ = obj.get("type")
    if type_ is None:
        raise MessageRejected(ErrorCode.INVALID_MESSAGE, "'type' is required")
    if not isinstance(type_, str) or not type_:
        raise _not_text("type", type_)
    fid = obj.get("id")
    if fid is not None and not isinstance(fid, str):
        raise MessageRejected(ErrorCode.INVALID_MESSAGE, f"'id' must be a string, got {json_type(fid)}")
    room = _text(obj, "room")
    to = _text(obj, "to")
    data = obj.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise MessageRejected(ErrorCode.INVALID_MESSAGE,
                              f"'data' must be an object, got {json_type(data)}")
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
    ts: str | None = None,
) -> dict[str, Any]:
    """Build a server-to-client frame as a dict (the order of keys is the wire order). ``id``
    and ``ts`` are new unless given (a stored frame sent again keeps its own)."""
    out: dict[str, Any] = {"type": type_, "id": id or new_id(), "ts": ts or now_ts()}
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
                retry_after: float | None = None, details: dict[str, Any] | None = None) -> bytes:
    data: dict[str, Any] = {"code": code, "message": message}
    if retry_after is not None:
        data["retry_after"] = round(retry_after, 3)
    if details is not None:
        data["details"] = details
    return encode(frame("error", data, reply_to=reply_to))


_TEXT_FIN = 0x81  # FIN + opcode 1 (text)


def text_frame(payload: bytes) -> bytes:
    """``payload`` as a complete unmasked server-to-client WebSocket text frame (RFC 6455
    §5.2), built once per fan-out and written as is to every recipient's transport."""
    n = len(payload)
    if n < 126:
        header = bytes((_TEXT_FIN, n))
    elif n < 65536:
        header = struct.pack("!BBH", _TEXT_FIN, 126, n)
    else:
        header = struct.pack("!BBQ", _TEXT_FIN, 127, n)
    return header + payload
