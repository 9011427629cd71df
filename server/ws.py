"""The WebSocket endpoint: the upgrade, authentication by a first frame when the upgrade had no
token, and the single read loop, which hands every text frame to the frame path
(``frames.py``) inside the connection's lifecycle (``lifecycle.py``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiohttp import WSMsgType, web
from pydantic import BaseModel, Field

from .auth import user_from_claims
from .connection import Connection
from .errors import AuthError, MessageRejected
from .frames import handle_frame, unsupported_frame
from .http.guards import CLAIMS, CLIENT_IP, LEASE
from .http.openapi import describe
from .keys import NODE, PIPELINE, REGISTRY
from .lifecycle import connected
from .node import Node
from .pipeline import Pipeline
from .protocol import CloseCode, ErrorCode, envelope, error_frame, frame_id, parse_json
from .registry import Registry

log = structlog.get_logger("server.ws")

_DONE = {WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR}
#: text frames a read loop handles between two yields to the event loop (docs/benchmarks.md)
FRAMES_PER_TURN = 4
#: close codes that must never be on the wire (RFC 6455 7.4.1). aiohttp's reader refuses 1005
#: and 1015 itself (1002) but hands a received 1006 on; its autoclose would answer it with 1000
_NEVER_SENT = frozenset({1005, 1006, 1015})


async def answer_close(ws: web.WebSocketResponse, msg: Any) -> None:
    """Answer the client's close frame (``autoclose`` is off so that this is the only answer):
    1002 for a code no endpoint may send (Autobahn case 7.9.5), else 1000."""
    code = CloseCode.PROTOCOL_ERROR if msg.data in _NEVER_SENT else CloseCode.NORMAL
    await ws.close(code=int(code), drain=False)


class MaskGuard(asyncio.Protocol):
    """Refuses unmasked client frames (RFC 6455 5.1: close 1002), which aiohttp accepts and whose
    mask bit its reader does not expose. Installed between an upgraded connection's socket and
    aiohttp's protocol (public asyncio ``transport.set_protocol``), it follows the frame headers
    of the client's bytes and passes them on unchanged; at the first unmasked frame it writes a
    close 1002 and closes the socket, and that frame never reaches aiohttp. Bytes that arrived
    together with the upgrade request (before the 101) are not seen: a client cannot have read
    the 101 by then."""

    _CLOSE = b"\x88\x10\x03\xeaunmasked frame"  # close 1002, 14-byte reason

    def __init__(self, transport: asyncio.Transport, inner: asyncio.Protocol) -> None:
        self._transport = transport
        self._inner = inner
        self._head = bytearray()  # the current frame's header, while incomplete
        self._skip = 0  # payload bytes of the current frame still to come
        self.refused = False

    @classmethod
    def install(cls, request: web.Request) -> "MaskGuard | None":
        transport = request.transport
        if not isinstance(transport, asyncio.Transport) or transport.is_closing():
            return None
        guard = cls(transport, transport.get_protocol())  # type: ignore[arg-type]
        transport.set_protocol(guard)
        return guard

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        head, n, pos, start = self._head, len(data), 0, 0
        while pos < n:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                continue
            if not head:
                start = pos
            head.append(data[pos])
            pos += 1
            if len(head) < 2:
                continue
            if not head[1] & 0x80:
                self._refuse(data[:start])
                return
            ext = {126: 2, 127: 8}.get(head[1] & 0x7F, 0)
            if len(head) == 2 + ext + 4:
                self._skip = int.from_bytes(head[2:2 + ext], "big") if ext else head[1] & 0x7F
                head.clear()
        self._inner.data_received(data)

    def _refuse(self, before: bytes) -> None:
        self.refused = True
        if before:
            self._inner.data_received(before)
        log.info("protocol_error", reason="unmasked client frame")
        self._transport.write(self._CLOSE)
        self._transport.close()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


async def _first_frame_auth(ws: web.WebSocketResponse,
                           node: Node) -> tuple[dict[str, Any], str | None] | None:
    """Wait for ``{"type": "auth", "data": {"token": ...}}`` within ``auth.first_message_timeout``
    (control frames aside); anything else gets an error frame and close 4500."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + node.config.auth.first_message_timeout
    while True:
        try:
            # a zero timeout would mean "no timeout" to aiohttp
            msg = await ws.receive(timeout=max(deadline - loop.time(), 0.001))
        except TimeoutError:
            log.info("auth_failed", via="first_frame", reason="no auth frame in time")
            await ws.close(code=CloseCode.AUTH_FAILED, message=b"no auth frame in time")
            return None
        if msg.type is WSMsgType.PING:
            await ws.pong(msg.data)
        elif msg.type is not WSMsgType.PONG:
            break
    if msg.type is not WSMsgType.TEXT:
        if msg.type is WSMsgType.CLOSE:
            await answer_close(ws, msg)
        elif msg.type not in _DONE:
            log.info("auth_failed", via="first_frame", reason="binary frame")
            await ws.close(code=CloseCode.AUTH_FAILED, message=b"expected an auth frame")
        return None
    reply_to: str | None = None
    try:
        obj = parse_json(msg.data)
        reply_to = frame_id(obj)
        env = envelope(obj)
        token = env.data.get("token")
        if env.type != "auth" or not isinstance(token, str):
            raise AuthError("the first frame must be {\"type\": \"auth\", \"data\": {\"token\": ...}}")
        claims = await node.auth.verify(token)
    except (MessageRejected, AuthError) as exc:
        log.info("auth_failed", via="first_frame", reason=str(exc))
        try:
            await ws.send_frame(error_frame(ErrorCode.UNAUTHORIZED, str(exc), reply_to=reply_to),
                                WSMsgType.TEXT)
        except ConnectionError:
            return None  # the client is gone already
        await ws.close(code=CloseCode.AUTH_FAILED, message=b"authentication failed")
        return None
    return claims, reply_to


class _UpgradeQuery(BaseModel):
    token: str | None = Field(None, description="the JWT (or send it in Authorization or an auth frame)")
    rooms: str | None = Field(None, description="rooms to join on connect, comma-separated")


@describe("The WebSocket endpoint (docs/protocol.md); refusals before the upgrade are JSON",
          query=_UpgradeQuery, status=101, errors=(400, 401, 403, 429, 503), tags=("websocket",))
async def websocket_handler(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    cfg = node.config
    ws = web.WebSocketResponse(
        # aiohttp refuses a frame of max_msg_size bytes or more on the wire, but an inflated
        # one only over max_msg_size: one more byte, so that a frame of exactly
        # server.max_message_size bytes is served; an inflated frame of exactly one byte over
        # is closed by the read loop (_inflated_too_big)
        max_msg_size=cfg.server.max_message_size + 1,
        compress=cfg.server.compression,
        autoping=False,
        autoclose=False,  # answer_close() answers the client's close
    )
    await ws.prepare(request)
    guard = MaskGuard.install(request)
    claims = request.get(CLAIMS)
    auth_frame_id: str | None = None
    if claims is None:
        authed = await _first_frame_auth(ws, node)
        if authed is None:
            return ws
        claims, auth_frame_id = authed
        if not request[LEASE].bind_user(str(claims["sub"])):
            log.info("upgrade_refused", via="first_frame", reason="per_user_cap", user_id=claims["sub"])
            await ws.close(code=CloseCode.TRY_AGAIN_LATER, message=b"too many connections for this user")
            return ws
    user = user_from_claims(claims)
    remote = request.get(CLIENT_IP) or request.remote or ""
    conn = Connection(ws, user, remote=remote, request=request,
                      log=log.bind(conn_id="", user_id=user.id),
                      max_bytes=cfg.server.write_buffer_size,
                      max_messages=cfg.server.max_queued_messages)
    conn.log = log.bind(conn_id=conn.id, user_id=user.id)
    structlog.contextvars.bind_contextvars(conn_id=conn.id, user_id=user.id)
    registry, pipeline = request.app[REGISTRY], request.app[PIPELINE]
    try:
        async with connected(node, registry, conn, claims, rooms=request.query.get("rooms", ""),
                             reply_to=auth_frame_id):
            await _read_loop(node, registry, pipeline, conn)
            if guard is not None and guard.refused:
                conn.close_code = CloseCode.PROTOCOL_ERROR
    finally:
        structlog.contextvars.unbind_contextvars("conn_id", "user_id")
    return ws


def _inflated_too_big(ws: web.WebSocketResponse, data: str, limit: int) -> bool:
    """Whether a text frame inflated with permessage-deflate is over ``limit`` bytes (aiohttp
    lets one byte more through, see ``max_msg_size`` above). Uncompressed frames are held to
    the limit by aiohttp itself."""
    return bool(ws.compress) and len(data) * 4 > limit and len(data.encode()) > limit


async def _read_loop(node: Node, registry: Registry, pipeline: Pipeline, conn: Connection) -> None:
    ws = conn.ws
    stats = node.stats
    limit = node.config.server.max_message_size
    since_yield = 0
    while True:
        msg = await ws.receive()
        conn.last_activity = time.monotonic()
        kind = msg.type
        if conn.closing and kind not in _DONE:
            # drain until the peer answers our close frame (ws.close() runs in another task);
            # what the client sent meanwhile is dropped, never handled
            continue
        if kind is WSMsgType.TEXT:
            if _inflated_too_big(ws, msg.data, limit):
                conn.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
                continue
            stats.messages_in += 1
            await handle_frame(node, registry, pipeline, conn, msg.data)
            # frames already buffered are returned without suspending: every few frames, let
            # the event loop poll the sockets and run the other tasks (the other connections'
            # frames, the writer tasks of recipients that fell behind) so one client's burst
            # neither starves the others nor closes its recipients as slow consumers
            since_yield += 1
            if since_yield == FRAMES_PER_TURN:
                since_yield = 0
                await asyncio.sleep(0)
        elif kind is WSMsgType.PING:
            await ws.pong(msg.data)
        elif kind is WSMsgType.PONG:
            continue
        elif kind is WSMsgType.BINARY:
            unsupported_frame(node, pipeline, conn)
        elif kind in _DONE:
            if kind is WSMsgType.CLOSE:
                await answer_close(ws, msg)
            elif kind is WSMsgType.ERROR:
                conn.log.info("connection_error", error=str(ws.exception()), code=ws.close_code)
            return
