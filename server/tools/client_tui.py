"""The interactive face of ``switchboard client``: a prompt_toolkit prompt with line editing,
history (kept in a file) and completion of command names; frames are printed above the prompt,
coloured by type, with local timestamps. ``quit`` and Ctrl-D exit with 0, Ctrl-C with 130,
and prompt_toolkit puts the terminal back as it found it either way."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import WordCompleter
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.output import ColorDepth
from prompt_toolkit.shortcuts import print_formatted_text
from prompt_toolkit.styles import Style

from .client import Client
from .client_commands import COMMANDS, CommandError, Quit

Fragments = list[tuple[str, str]]

STYLE = Style.from_dict({
    "ts": "#888888",
    "from": "bold ansicyan",
    "room": "ansiblue",
    "ok": "ansigreen",
    "error": "bold ansired",
    "event": "ansiyellow",
    "notify": "bold ansimagenta",
    "message": "",
    "other": "#aaaaaa",
    "local": "italic #888888",
    "prompt": "bold",
    "offline": "bold ansired",
})
_KIND = {
    "message": "message", "history": "message",
    "ack": "ok", "joined": "ok", "left": "ok", "pong": "ok", "connected": "ok", "refreshed": "ok",
    "error": "error",
    "user_joined": "event", "user_left": "event", "typing": "event", "presence": "event",
    "presence.state": "event", "user_status": "event",
    "notification": "notify", "broadcast": "notify", "system_message": "notify",
}


def local_time(ts: Any) -> str:
    """An RFC 3339 timestamp as local wall-clock time (now when there is none)."""
    try:
        moment = datetime.fromisoformat(str(ts)).astimezone()
    except ValueError:
        moment = datetime.now()
    return moment.strftime("%H:%M:%S")


def _user(obj: dict[str, Any]) -> str:
    sender = obj.get("from") or {}
    return str(sender.get("username") or sender.get("id") or "?") if isinstance(sender, dict) else "?"


def _compact(value: Any) -> str:
    return orjson.dumps(value).decode()


def _message(obj: dict[str, Any]) -> Fragments:
    data = obj.get("data") or {}
    extra = {k: v for k, v in data.items() if k != "content"}
    where = f"#{obj['room']}" if obj.get("room") else f"→ {obj.get('to') or 'you'}"
    out: Fragments = [("class:room", where + " "), ("class:from", _user(obj) + ": "),
                      ("class:message", str(data.get("content", "")))]
    if extra:
        out.append(("class:other", " " + _compact(extra)))
    return out


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _summary(obj: dict[str, Any], rtt_ms: float | None) -> Fragments:
    type_, data = obj.get("type"), _dict(obj.get("data"))
    room = f"#{obj.get('room') or data.get('room') or ''}"
    user = _dict(data.get("user"))
    name = str(user.get("username") or user.get("id"))
    if type_ == "message":
        return _message(obj)
    if type_ == "pong":
        return [("", f"{rtt_ms:.2f} ms" if rtt_ms is not None else "")]
    if type_ == "error":
        return [("class:error", f"{data.get('code')}: {data.get('message')}")]
    if type_ == "connected":
        rooms = ", ".join(data.get("rooms") or []) or "none"
        return [("", f"as {name} ({user.get('id')}), {data.get('online_count')} online, rooms: {rooms}")]
    if type_ == "joined":
        missed = f", {len(data['missed'])} missed" if data.get("missed") else ""
        count = data.get("members_count")
        members = "1 member" if count == 1 else f"{count} members"
        return [("class:room", room), ("", f" ({members}{missed})")]
    if type_ in ("user_joined", "user_left"):
        return [("class:from", name), ("", f" {type_[5:]} "), ("class:room", room)]
    if type_ == "typing":
        verb = "is typing" if data.get("is_typing") else "stopped typing"
        return [("class:from", _user(obj)), ("", f" {verb}" + (" in " if obj.get("room") else "")),
                ("class:room", room if obj.get("room") else "")]
    if type_ in ("presence", "user_status"):
        return [("class:from", _user(obj) if obj.get("from") else str(data.get("user_id"))),
                ("", f" is {data.get('status')}")]
    if type_ == "ack":
        done = next((f"{key} {data[key]}" for key in ("offset", "id") if data.get(key)), "")
        if data.get("filtered"):  # the others got the masked text: so does the sender
            return [("", f"{done}, delivered as "), ("class:message", str(data.get("content", "")))]
        return [("", done)]
    if type_ == "history":
        where = room if data.get("to") is None else f"@{data['to']}"
        return [("class:room", where), ("", f" {len(data.get('messages') or [])} messages")]
    if type_ == "notification":
        title, text = data.get("title") or data.get("notification_type"), data.get("message")
        return [("", f"{title}: {text}" if text else str(title))]
    return [("", _compact(data))]


def fragments(obj: dict[str, Any], rtt_ms: float | None = None) -> Fragments:
    type_ = str(obj.get("type"))
    kind = _KIND.get(type_, "other")
    out: Fragments = [("class:ts", local_time(obj.get("ts")) + " "),
                      (f"class:{kind}", f"{type_:<13}")]
    out += _summary(obj, rtt_ms)
    for missed in (obj.get("data") or {}).get("messages" if type_ == "history" else "missed") or ():
        if isinstance(missed, dict):
            out += [("", "\n" + " " * 9), ("class:message", f"{'':<13}")] + _message(missed)
    return out


class Terminal:
    """Output for a person: lines above the prompt."""

    def __init__(self, color: bool) -> None:
        self.depth = ColorDepth.DEFAULT if color else ColorDepth.MONOCHROME

    def _print(self, frags: Fragments) -> None:
        print_formatted_text(FormattedText(frags), style=STYLE, color_depth=self.depth)

    def frame(self, obj: dict[str, Any], rtt_ms: float | None = None) -> None:
        self._print(fragments(obj, rtt_ms))

    def local(self, type_: str, data: dict[str, Any]) -> None:
        if type_ == "client.who":
            users = data.get("users") or []
            names = ", ".join(f"{u.get('username') or u.get('user_id')}"
                              f"{' (' + u['status'] + ')' if u.get('status') else ''}" for u in users)
            text = f"{data.get('online_count', len(users))} online: {names}"
        else:
            text = _compact(data)
        self._print([("class:ts", local_time(None) + " "), ("class:local", f"{type_[7:]:<13}{text}")])

    def notice(self, text: str) -> None:
        self._print([("class:local", text)])


def _history(path: str | None) -> History:
    file = Path(path) if path else Path.home() / ".switchboard_history"
    try:
        file.touch(exist_ok=True)
    except OSError:
        return InMemoryHistory()
    return FileHistory(str(file))


async def run_interactive(client: Client, history_file: str | None) -> int:
    session: PromptSession[str] = PromptSession(
        history=_history(history_file), completer=WordCompleter(list(COMMANDS)),
        complete_while_typing=False, style=STYLE)

    def prompt() -> FormattedText:
        who = client.user.get("username") or client.user.get("id") or "?"
        if not client.connected:
            return FormattedText([("class:offline", f"{who} (offline)> ")])
        return FormattedText([("class:prompt", f"{who}@{client.room or '-'}> ")])

    def redraw() -> None:
        if session.app.is_running:
            session.app.invalidate()

    def gone(_: asyncio.Future[int]) -> None:
        if session.app.is_running:
            session.app.exit(exception=EOFError())

    client.on_change = redraw
    client.gone.add_done_callback(gone)
    client.out.notice("connected to " + client.url + "; type help for the commands, quit to leave")
    while not client.gone.done():
        try:
            line = await session.prompt_async(prompt)
        except EOFError:  # Ctrl-D, or the connection is gone for good
            break
        except KeyboardInterrupt:  # Ctrl-C
            return 130
        try:
            await client.execute(line)
        except Quit:
            break
        except CommandError as exc:
            client.out.notice(str(exc))
    return 1 if client.gone.done() else 0
