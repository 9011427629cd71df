"""The commands of ``switchboard client`` and how a command line becomes a frame (PROTOCOL §3).

A leaf of the client: it knows a session only as :class:`Session` (its joined rooms and the
current one), so :mod:`.client`, the script runner and the terminal UI all import it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import orjson

HELP: tuple[tuple[str, str], ...] = (
    ("text <msg>", "send a message to the current room"),
    ("join <room>", "join a room; it becomes the current room"),
    ("leave [room]", "leave a room (default: the current one)"),
    ("to <user> <msg>", "private message to every connection of a user id"),
    ("typing [on|off]", "typing indicator in the current room (default: on)"),
    ("presence <status>", "set your status: online, away, busy, offline"),
    ("notification <user> <title>", "notify a user (roles in permissions.notify)"),
    ("history [@user] [n]", "the last n messages of the current room, or of your private "
                            "conversation with a user"),
    ("who", "who is online (GET /api/online)"),
    ("ping", "round trip to the server in ms"),
    ("json <frame>", "send a frame exactly as typed"),
    ("wait <seconds>", "keep receiving for a while, then go on (scripts)"),
    ("help", "this list"),
    ("quit", "close the connection and exit (also Ctrl-D)"),
)
COMMANDS = tuple(usage.split()[0] for usage, _ in HELP)


class CommandError(Exception):
    """A command line that cannot be run: the message says why."""


class Quit(Exception):
    """``quit`` was typed."""


class Session(Protocol):
    """What a command needs of the client: its joined rooms (with the last offset seen in
    each) and the current room."""

    rooms: dict[str, str | None]

    def current_room(self) -> str:
        """The current room; CommandError when there is none."""


def need(text: str, usage: str) -> str:
    if not text:
        raise CommandError(f"usage: {usage}")
    return text


def number(text: str, usage: str) -> float:
    try:
        value = float(need(text, usage))
    except ValueError:
        raise CommandError(f"usage: {usage} (not a number: {text!r})") from None
    if not 0 <= value < 86400:
        raise CommandError(f"usage: {usage} (out of range: {text})")
    return value


def _two(text: str, usage: str) -> tuple[str, str]:
    first, _, rest = text.partition(" ")
    if not first or not rest.strip():
        raise CommandError(f"usage: {usage}")
    return first, rest.strip()


def raw_id(text: str) -> str | None:
    """The ``id`` of a frame typed after ``json``, when it has one."""
    try:
        obj = orjson.loads(text)
    except ValueError:
        return None
    fid = obj.get("id") if isinstance(obj, dict) else None
    return fid if isinstance(fid, str) else None


def _text(c: Session, rest: str) -> dict[str, Any]:
    return {"type": "message", "room": c.current_room(), "data": {"content": need(rest, "text <msg>")}}


def _join(c: Session, rest: str) -> dict[str, Any]:
    room = need(rest, "join <room>")
    offset = c.rooms.get(room)
    return {"type": "join", "room": room, "data": {} if offset is None else {"since": offset}}


def _leave(c: Session, rest: str) -> dict[str, Any]:
    return {"type": "leave", "room": rest or c.current_room()}


def _to(c: Session, rest: str) -> dict[str, Any]:
    user, content = _two(rest, "to <user> <msg>")
    return {"type": "message", "to": user, "data": {"content": content}}


def _typing(c: Session, rest: str) -> dict[str, Any]:
    if rest.lower() not in ("", "on", "off"):
        raise CommandError("usage: typing [on|off]")
    return {"type": "typing", "room": c.current_room(), "data": {"is_typing": rest.lower() != "off"}}


def _presence(c: Session, rest: str) -> dict[str, Any]:
    return {"type": "presence", "data": {"status": need(rest, "presence <status>")}}


def _notification(c: Session, rest: str) -> dict[str, Any]:
    user, title = _two(rest, "notification <user> <title>")
    return {"type": "notification", "to": user,
            "data": {"notification_type": "info", "title": title}}


def _history(c: Session, rest: str) -> dict[str, Any]:
    words = rest.split()
    peer = words.pop(0)[1:] if words and words[0].startswith("@") and len(words[0]) > 1 else None
    data: dict[str, Any] = {}
    if words:
        if len(words) > 1 or not words[0].isdigit() or int(words[0]) < 1:
            raise CommandError("usage: history [@user] [n] (n a positive number, not "
                               f"{' '.join(words)!r})")
        data["limit"] = int(words[0])
    if peer is not None:
        return {"type": "history", "to": peer, "data": data}
    return {"type": "history", "room": c.current_room(), "data": data}


def _ping(c: Session, rest: str) -> dict[str, Any]:
    return {"type": "ping"}


#: the commands that are one frame, built from the rest of the line
BUILDERS: dict[str, Callable[[Session, str], dict[str, Any]]] = {
    "text": _text, "join": _join, "leave": _leave, "to": _to, "typing": _typing,
    "presence": _presence, "notification": _notification, "history": _history, "ping": _ping,
}
