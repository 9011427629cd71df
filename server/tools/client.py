"""``switchboard client``: one WebSocket connection driven by command lines, for people (the
prompt in ``client_tui.py``) and for scripts (commands from stdin or a file, every received
frame printed as one JSON line on stdout, notices on stderr).

Both drive the same :class:`Client`. It turns commands into frames (PROTOCOL §3), keeps the
current room and the last offset seen in each joined room, times ping round trips, and
reconnects on its own after a close the contract says to retry (PROTOCOL §4), with backoff
and jitter and a fresh token when it mints its own, re-joining its rooms with ``since`` so
nothing sent meanwhile is missed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import WSMsgType
from yarl import URL

HELP: tuple[tuple[str, str], ...] = (
    ("text <msg>", "send a message to the current room"),
    ("join <room>", "join a room; it becomes the current room"),
    ("leave [room]", "leave a room (default: the current one)"),
    ("to <user> <msg>", "private message to every connection of a user id"),
    ("typing [on|off]", "typing indicator in the current room (default: on)"),
    ("presence <status>", "set your status: online, away, busy, offline"),
    ("notification <user> <title>", "notify a user (roles in permissions.notify)"),
    ("history [n]", "the current room's last n messages"),
    ("who", "who is online (GET /api/online)"),
    ("ping", "round trip to the server in ms"),
    ("json <frame>", "send a frame exactly as typed"),
    ("wait <seconds>", "keep receiving for a while, then go on (scripts)"),
    ("help", "this list"),
    ("quit", "close the connection and exit (also Ctrl-D)"),
)
COMMANDS = tuple(usage.split()[0] for usage, _ in HELP)

#: a close the contract says not to retry (PROTOCOL §4), besides 4500-4999
_FINAL_CLOSES = {1000: "normal closure", 1002: "protocol error", 1003: "unsupported data",
                 1007: "invalid UTF-8", 1009: "frame too big"}
_CLOSE_MEANING = {1001: "server going away", 1011: "server error", 1013: "server overloaded",
                  4001: "token expired", 4008: "too slow to read", 4010: "heartbeat timeout",
                  4013: "rate limited", 4500: "authentication failed",
                  4501: "too many invalid frames", 4503: "kicked or token revoked",
                  4507: "forbidden", **_FINAL_CLOSES}
MAX_BACKOFF = 10.0
#: seconds a connection must last for the next drop to start the backoff over
STABLE_AFTER = 5.0
CONNECT_TIMEOUT = 10.0
#: how long a close waits for the server's answer (a dead peer must not hold up a reconnect)
_WS_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0)


class CommandError(Exception):
    """A command line that cannot be run: the message says why."""


class Quit(Exception):
    """``quit`` was typed."""


class ConnectError(Exception):
    """The connection could not be opened. ``retry`` is False when trying again cannot help
    (refused token, forbidden address or origin)."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class Refused(aiohttp.ClientError):
    """The server refused the upgrade with a status and the contract's JSON error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}" if message else f"{status} {code}")
        self.status, self.code = status, code


async def refusal_middleware(req: aiohttp.ClientRequest,
                             handler: Callable[[aiohttp.ClientRequest], Any]) -> aiohttp.ClientResponse:
    """Turn a refused upgrade into :class:`Refused` with the code and message of its body,
    which ``ws_connect`` would otherwise drop."""
    resp: aiohttp.ClientResponse = await handler(req)
    if resp.status == 101 or aiohttp.hdrs.UPGRADE not in req.headers:
        return resp
    try:
        body = orjson.loads(await resp.read())
        error = body["error"]
        code, message = str(error["code"]), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, aiohttp.ClientError):
        code, message = resp.reason or "refused", ""
    finally:
        resp.release()
    raise Refused(resp.status, code, message)


def describe_failure(exc: BaseException) -> tuple[str, bool]:
    """A short reason for a failed connect, and whether trying again may help."""
    if isinstance(exc, Refused):
        return str(exc), exc.status not in (401, 403)
    if isinstance(exc, aiohttp.ClientConnectorError):
        exc = exc.os_error
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower(), True
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"{exc.status} {exc.message}", exc.status not in (401, 403)
    if isinstance(exc, TimeoutError):
        return "timed out", True
    return str(exc) or type(exc).__name__, True


def close_text(code: int | None, reason: str = "") -> str:
    if code is None:
        return "connection lost"
    meaning = reason or _CLOSE_MEANING.get(code, "")
    return f"closed {code}" + (f" ({meaning})" if meaning else "")


def retry_delay(code: int | None, attempt: int, *, fresh_token: bool) -> float | None:
    """Seconds before reconnect attempt ``attempt`` (from 0) after a close with ``code``, or
    None when the contract says to stop: 1000, a client error, 4500-4999, or an expired token
    that cannot be renewed."""
    if code in _FINAL_CLOSES or (code is not None and 4500 <= code <= 4999):
        return None
    if code == 4001 and not fresh_token:
        return None
    base = 2.0 if code == 1013 else 0.25
    return min(MAX_BACKOFF, base * 2.0 ** attempt) * random.uniform(0.5, 1.0)


class Output(Protocol):
    """Where a client's traffic goes: a terminal UI or JSON lines."""

    def frame(self, obj: dict[str, Any], rtt_ms: float | None = None) -> None:
        """A frame from the server; ``rtt_ms`` for the reply to a ping."""

    def local(self, type_: str, data: dict[str, Any]) -> None:
        """An event of the client itself (``client.who``, ``client.disconnected``, ...)."""

    def notice(self, text: str) -> None:
        """Something for a person to read: a problem, a reconnect, help."""


@dataclass(slots=True)
class _Pending:
    command: str
    sent: float
    reply: asyncio.Future[dict[str, Any]]


class Client:
    def __init__(self, url: str, token: Callable[[], str], out: Output, *,
                 fresh_tokens: bool = False, auto_ping: float | None = None,
                 max_retries: int = 10) -> None:
        self.url = url
        self.token = token
        self.out = out
        self.fresh_tokens = fresh_tokens
        self.auto_ping = auto_ping
        self.max_retries = max_retries
        self.user: dict[str, Any] = {}
        self.room: str | None = None
        #: joined rooms, with the offset of the last message seen in each (for ``since``)
        self.rooms: dict[str, str | None] = {}
        self.on_change: Callable[[], None] = lambda: None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._up = asyncio.Event()
        self._closing = False
        self._opened_at = 0.0
        self._failures = 0  # reconnect attempts since the last stable connection
        self._dropped: tuple[int, str] | None = None  # why we closed the connection ourselves
        self._tasks: list[asyncio.Task[None]] = []
        #: set to the exit status once the client gives up reconnecting
        self.gone: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    # --- connection ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the connection (ConnectError when that fails) and start reading."""
        self._session = aiohttp.ClientSession(middlewares=(refusal_middleware,))
        try:
            ws = await self._open()
        except ConnectError:
            await self._session.close()
            raise
        self._tasks.append(asyncio.get_running_loop().create_task(self._supervise(ws)))
        if self.auto_ping:
            self._tasks.append(asyncio.get_running_loop().create_task(self._pinger(self.auto_ping)))

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        assert self._session is not None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                ws = await self._session.ws_connect(
                    self.url, headers={"Authorization": f"Bearer {self.token()}"},
                    autoping=True, max_msg_size=0, timeout=_WS_TIMEOUT)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason, retry = describe_failure(exc)
            raise ConnectError(f"cannot connect to {self.url}: {reason}", retry=retry) from None
        try:
            obj = await self._welcome(ws)
        except BaseException:
            await ws.close()
            raise
        data = obj.get("data") or {}
        self.user = data.get("user") or {}
        for room in data.get("rooms") or ():
            self.rooms.setdefault(room, None)
        self._ws = ws
        self._opened_at = time.monotonic()
        self._up.set()
        self.on_change()
        return ws

    async def _welcome(self, ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
        """Read up to the ``connected`` frame (room refusals may come before it)."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                while True:
                    msg = await ws.receive()
                    if msg.type is not WSMsgType.TEXT:
                        code = ws.close_code
                        raise ConnectError(
                            f"{self.url}: {close_text(code, str(msg.extra or ''))} before `connected`",
                            retry=retry_delay(code, 0, fresh_token=True) is not None)
                    obj = _decode(msg.data)
                    self.out.frame(obj)
                    if obj.get("type") == "connected":
                        return obj
        except TimeoutError:
            raise ConnectError(f"{self.url}: no `connected` frame within {CONNECT_TIMEOUT:g}s",
                               retry=True) from None

    async def _supervise(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            code, reason = await self._read(ws)
            if self._dropped is not None:  # we closed it: no pong
                (code, reason), self._dropped = self._dropped, None
            self._up.clear()
            self._ws = None
            for pending in self._pending.values():
                if not pending.reply.done():
                    pending.reply.set_exception(ConnectionError(close_text(code, reason)))
            self._pending.clear()
            self.on_change()
            if self._closing:
                return
            self.out.local("client.disconnected", {"code": code, "reason": reason})
            reopened = await self._reconnect(code, reason)
            if reopened is None:
                self.gone.set_result(1)
                self.on_change()
                return
            ws = reopened

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                self._received(_decode(msg.data))
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                code = None if ws.close_code in (None, 1006) else ws.close_code
                reason = str(msg.extra or "") if msg.type is WSMsgType.CLOSE else ""
                return code, reason

    async def _reconnect(self, code: int | None,
                         reason: str) -> aiohttp.ClientWebSocketResponse | None:
        """Reconnect with backoff. The backoff goes on growing over a server that accepts and
        drops at once; it starts over after a connection that lasted ``STABLE_AFTER``."""
        if time.monotonic() - self._opened_at >= STABLE_AFTER:
            self._failures = 0
        while self._failures < self.max_retries:
            attempt = self._failures
            self._failures += 1
            delay = retry_delay(code, attempt, fresh_token=self.fresh_tokens)
            if delay is None:
                self.out.notice(f"{close_text(code, reason)}: not reconnecting")
                return None
            self.out.notice(f"{close_text(code, reason)}: reconnecting in {delay:.1f}s "
                            f"(attempt {attempt + 1} of {self.max_retries})")
            await asyncio.sleep(delay)
            try:
                ws = await self._open()
            except ConnectError as exc:
                self.out.notice(str(exc))
                if not exc.retry:
                    return None
                continue
            for room, offset in self.rooms.items():  # catch up on what was missed
                await self._send({"type": "join", "room": room,
                                  "data": {} if offset is None else {"since": offset}}, "rejoin")
            return ws
        self.out.notice(f"gave up after {self.max_retries} attempts")
        return None

    async def _pinger(self, every: float) -> None:
        """Ping every ``every`` seconds; a ping still unanswered at the next one means the
        connection is dead: drop it and reconnect."""
        last: asyncio.Future[dict[str, Any]] | None = None
        while True:
            await asyncio.sleep(every)
            ws = self._ws
            if ws is None:
                continue
            if last is not None and not last.done():
                self.out.notice(f"no pong within {every:g}s: reconnecting")
                last = None
                self._dropped = (4010, "no pong")
                await ws.close(code=4010, message=b"no pong")
                continue
            try:
                last = await self._send({"type": "ping"}, "ping")
            except CommandError:  # dropped meanwhile: the supervisor reconnects
                last = None

    async def close(self) -> None:
        self._closing = True
        ws = self._ws
        if ws is not None:
            await ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # --- traffic ------------------------------------------------------------------------------
    def _received(self, obj: dict[str, Any]) -> None:
        type_, room, data = obj.get("type"), obj.get("room"), obj.get("data") or {}
        if isinstance(room, str) and room in self.rooms and obj.get("offset"):
            self.rooms[room] = obj["offset"]
        pending = self._pending.pop(obj.get("reply_to") or "", None)
        rtt = None
        if pending is not None:
            rtt = (time.perf_counter() - pending.sent) * 1000 if type_ == "pong" else None
            if type_ == "joined" and isinstance(room, str):
                self.rooms[room] = data.get("offset") or self.rooms.get(room)
                if pending.command == "join":  # a re-join keeps the current room
                    self.room = room
            elif type_ == "left" and isinstance(room, str):
                self.rooms.pop(room, None)
                if self.room == room:
                    self.room = next(iter(self.rooms), None)
            if not pending.reply.done():
                pending.reply.set_result(obj)
            self.on_change()
        self.out.frame(obj, rtt)

    async def _send(self, frame: dict[str, Any] | str, command: str,
                    fid: str | None = None) -> asyncio.Future[dict[str, Any]] | None:
        """Send ``frame`` (a dict gets an id); the future of its reply, or None when no reply
        will come (typing, a raw frame without an id)."""
        ws = self._ws
        if ws is None:
            raise CommandError("not connected (reconnecting)")
        reply: asyncio.Future[dict[str, Any]] | None = None
        if isinstance(frame, dict):
            if command != "typing":
                fid = frame["id"] = f"c{next(self._ids)}"
            text = orjson.dumps(frame).decode()
        else:
            text = frame
        if fid is not None:
            reply = asyncio.get_running_loop().create_future()
            self._pending[fid] = _Pending(command, time.perf_counter(), reply)
        try:
            await ws.send_str(text)
        except ConnectionError as exc:
            self._pending.pop(fid or "", None)
            raise CommandError(f"not sent: {exc}") from None
        return reply

    async def execute(self, line: str) -> asyncio.Future[dict[str, Any]] | None:
        """Run one command line. Returns the future of the server's reply when one is due.
        Raises CommandError for bad input and Quit for ``quit``."""
        line = line.strip()
        if not line or line.startswith("#"):
            return None
        name, _, rest = line.partition(" ")
        name, rest = name.lower(), rest.strip()
        if name == "quit":
            raise Quit
        if name == "help":
            width = max(len(usage) for usage, _ in HELP)
            for usage, what in HELP:
                self.out.notice(f"{usage:<{width}}  {what}")
            return None
        if name == "wait":
            await asyncio.sleep(_number(rest, "wait <seconds>"))
            return None
        if name == "who":
            self.out.local("client.who", await self._who())
            return None
        if name == "json":
            return await self._send(_need(rest, "json <frame>"), "json", _raw_id(rest))
        build = _BUILDERS.get(name)
        if build is None:
            raise CommandError(f"unknown command {name!r} (type help)")
        return await self._send(build(self, rest), name)

    async def _who(self) -> dict[str, Any]:
        assert self._session is not None
        url = URL(self.url)
        api = url.with_scheme("https" if url.scheme == "wss" else "http").with_path("/api/online")
        try:
            async with self._session.get(api.with_query(None),
                                         headers={"Authorization": f"Bearer {self.token()}"}) as resp:
                text = await resp.text()
        except aiohttp.ClientError as exc:
            raise CommandError(f"who: GET {api.path} failed: {exc}") from None
        try:
            body = orjson.loads(text)
        except ValueError:
            body = None
        if resp.status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            detail = f"{error.get('code')}: {error.get('message')}" if isinstance(error, dict) \
                else text.strip()[:120]
            raise CommandError(f"who: GET {api.path}: {resp.status} {detail}")
        return body

    def current_room(self) -> str:
        if self.room is None:
            raise CommandError("no current room: join one first")
        return self.room


# --- command lines to frames ------------------------------------------------------------------
def _need(text: str, usage: str) -> str:
    if not text:
        raise CommandError(f"usage: {usage}")
    return text


def _number(text: str, usage: str) -> float:
    try:
        value = float(_need(text, usage))
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


def _raw_id(text: str) -> str | None:
    try:
        obj = orjson.loads(text)
    except ValueError:
        return None
    fid = obj.get("id") if isinstance(obj, dict) else None
    return fid if isinstance(fid, str) else None


def _text(c: Client, rest: str) -> dict[str, Any]:
    return {"type": "message", "room": c.current_room(), "data": {"content": _need(rest, "text <msg>")}}


def _join(c: Client, rest: str) -> dict[str, Any]:
    room = _need(rest, "join <room>")
    offset = c.rooms.get(room)
    return {"type": "join", "room": room, "data": {} if offset is None else {"since": offset}}


def _leave(c: Client, rest: str) -> dict[str, Any]:
    return {"type": "leave", "room": rest or c.current_room()}


def _to(c: Client, rest: str) -> dict[str, Any]:
    user, content = _two(rest, "to <user> <msg>")
    return {"type": "message", "to": user, "data": {"content": content}}


def _typing(c: Client, rest: str) -> dict[str, Any]:
    if rest.lower() not in ("", "on", "off"):
        raise CommandError("usage: typing [on|off]")
    return {"type": "typing", "room": c.current_room(), "data": {"is_typing": rest.lower() != "off"}}


def _presence(c: Client, rest: str) -> dict[str, Any]:
    return {"type": "presence", "data": {"status": _need(rest, "presence <status>")}}


def _notification(c: Client, rest: str) -> dict[str, Any]:
    user, title = _two(rest, "notification <user> <title>")
    return {"type": "notification", "to": user,
            "data": {"notification_type": "info", "title": title}}


def _history(c: Client, rest: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if rest:
        if not rest.isdigit() or int(rest) < 1:
            raise CommandError(f"usage: history [n] (n a positive number, not {rest!r})")
        data["limit"] = int(rest)
    return {"type": "history", "room": c.current_room(), "data": data}


def _ping(c: Client, rest: str) -> dict[str, Any]:
    return {"type": "ping"}


_BUILDERS: dict[str, Callable[[Client, str], dict[str, Any]]] = {
    "text": _text, "join": _join, "leave": _leave, "to": _to, "typing": _typing,
    "presence": _presence, "notification": _notification, "history": _history, "ping": _ping,
}


def _decode(text: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(text)
    except ValueError:
        return {"type": "client.unparsable", "data": {"text": text}}
    return obj if isinstance(obj, dict) else {"type": "client.unparsable", "data": {"text": text}}


# --- scripts ----------------------------------------------------------------------------------
class JsonLines:
    """Script output: each frame received as one JSON line on stdout, notices on stderr."""

    def frame(self, obj: dict[str, Any], rtt_ms: float | None = None) -> None:
        self._line(obj)
        if rtt_ms is not None:
            self._line({"type": "client.rtt", "data": {"reply_to": obj.get("reply_to"),
                                                       "ms": round(rtt_ms, 3)}})

    def local(self, type_: str, data: dict[str, Any]) -> None:
        self._line({"type": type_, "data": data})

    def notice(self, text: str) -> None:
        print(f"switchboard client: {text}", file=sys.stderr, flush=True)

    @staticmethod
    def _line(obj: dict[str, Any]) -> None:
        sys.stdout.write(orjson.dumps(obj).decode() + "\n")
        sys.stdout.flush()


async def script_lines(path: str | None) -> AsyncIterator[str]:
    """Command lines from ``path``, or from stdin as they come (a pipe, a terminal)."""
    if path is not None and path != "-":
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            yield line
        return
    if Path(f"/proc/self/fd/{sys.stdin.fileno()}").resolve().is_file():  # `< file`
        for line in sys.stdin.read().splitlines():
            yield line
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while raw := await reader.readline():
            yield raw.decode("utf-8", errors="replace")
    finally:
        transport.close()


async def _first(aw: Any, gone: asyncio.Future[int]) -> Any:
    """Await ``aw`` unless the client gives up first (then return ``gone``)."""
    task = asyncio.ensure_future(aw)
    await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    return gone


async def run_script(client: Client, lines: AsyncIterator[str], timeout: float) -> int:
    """Run command lines in order, each one waiting for its reply (up to ``timeout``).
    Returns the exit status: 1 when a line failed or the connection was lost for good."""
    status = 0
    number = 0
    source = aiter(lines)
    while True:
        line = await _first(anext(source, None), client.gone)
        if line is client.gone or line is None:
            break
        number += 1
        try:
            reply = await _first(client.execute(line), client.gone)
            if reply is client.gone:
                break
            if reply is not None:
                await asyncio.wait_for(asyncio.shield(reply), timeout)
        except Quit:
            break
        except CommandError as exc:
            client.out.notice(f"line {number}: {exc}")
            status = 1
        except TimeoutError:
            client.out.notice(f"line {number}: no reply within {timeout:g}s: {line.strip()}")
            status = 1
        except ConnectionError as exc:
            client.out.notice(f"line {number}: no reply: {exc}")
            status = 1
    if client.gone.done():
        return 1
    return status


async def main(url: str, token: Callable[[], str], *, fresh_tokens: bool, interactive: bool,
               script: str | None = None, auto_ping: float | None = None, timeout: float = 5.0,
               max_retries: int = 10, history_file: str | None = None,
               color: bool = True) -> int:
    """``switchboard client``: 0 on success, 1 when the connection failed or a script line
    did, 130 after Ctrl-C."""
    if interactive:
        from .client_tui import Terminal, run_interactive
        out: Output = Terminal(color)
    else:
        out = JsonLines()
    client = Client(url, token, out, fresh_tokens=fresh_tokens, auto_ping=auto_ping,
                    max_retries=max_retries)
    try:
        await client.start()
    except ConnectError as exc:
        print(f"switchboard client: {exc}", file=sys.stderr)
        return 1
    try:
        if interactive:
            return await run_interactive(client, history_file)
        return await run_script(client, script_lines(script), timeout)
    finally:
        await client.close()
