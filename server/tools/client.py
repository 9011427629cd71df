"""The client of ``switchboard client``: one WebSocket connection driven by command lines.

:class:`Client` turns commands (:mod:`.client_commands`) into frames (PROTOCOL §3), keeps the
current room and the last offset seen in each joined room, times ping round trips, and
reconnects on its own after a close the catalogue says to retry (``server.protocol.codes``,
PROTOCOL §4), with backoff and jitter and a fresh token when it mints its own, re-joining its
rooms with ``since`` so nothing sent meanwhile is missed. What it receives goes to an
:class:`Output`: the terminal UI (``client_tui.py``) or JSON lines (``client_script.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import WSMsgType
from yarl import URL

from ..protocol.codes import MAX_BACKOFF, close_action, close_backoff, close_info
from .client_commands import BUILDERS, HELP, CommandError, Quit, need, number, raw_id

#: seconds a connection must last for the next drop to start the backoff over
STABLE_AFTER = 5.0
CONNECT_TIMEOUT = 10.0
#: how long a close waits for the server's answer (a dead peer must not hold up a reconnect)
_WS_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0)


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


def peer_close_code(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """The code the server closed with; None when the connection dropped (1006 is never sent)."""
    return None if ws.close_code in (None, 1006) else ws.close_code


def close_text(code: int | None, reason: str = "") -> str:
    if code is None:
        return "connection lost"
    info = close_info(code)
    meaning = reason or (info.meaning if info is not None else "")
    return f"closed {code}" + (f" ({meaning})" if meaning else "")


def retry_delay(code: int | None, attempt: int, *, fresh_token: bool) -> float | None:
    """Seconds before reconnect attempt ``attempt`` (from 0) after a close with ``code``, or
    None when the catalogue says to stop, or to get a new token and this client cannot."""
    action = close_action(code)
    if action == "stop" or (action == "token" and not fresh_token):
        return None
    return min(MAX_BACKOFF, close_backoff(code) * 2.0 ** attempt) * random.uniform(0.5, 1.0)


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
        if self.room is None and self.rooms:  # joined on connect (rooms.default_rooms, ?rooms=)
            self.room = next(iter(self.rooms))
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
                        code = peer_close_code(ws)
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
                code = peer_close_code(ws)
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
            await asyncio.sleep(number(rest, "wait <seconds>"))
            return None
        if name == "who":
            self.out.local("client.who", await self._who())
            return None
        if name == "json":
            return await self._send(need(rest, "json <frame>"), "json", raw_id(rest))
        build = BUILDERS.get(name)
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


def _decode(text: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(text)
    except ValueError:
        return {"type": "client.unparsable", "data": {"text": text}}
    return obj if isinstance(obj, dict) else {"type": "client.unparsable", "data": {"text": text}}
