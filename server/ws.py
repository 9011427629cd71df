"""The WebSocket endpoint: the upgrade, authentication by a first frame when the upgrade had no
token, and the single read loop, which hands every text frame to the frame path
(``frames.py``) inside the connection's lifecycle (``lifecycle.py``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import structlog
from aiohttp import WSMsgType, web
from aiohttp.http_writer import StreamWriter
from pydantic import BaseModel, Field

from .auth import user_from_claims
from .connection import Connection
from .errors import AuthError, MessageRejected
from .frames import handle_frame, unsupported_frame
from .http.errors import counted, http_error
from .http.guards import GUARD, Lease
from .http.handshake import request_done
from .http.wire import MaskGuard, answer_close
from .http.openapi import describe
from .log import bind_connection, unbind_connection
from .keys import NODE, PIPELINE, REGISTRY
from .lifecycle import close_connection, open_connection
from .node import Node
from .pipeline import Pipeline
from .protocol import CloseCode, ErrorCode, envelope, error_frame, frame_id, parse_json
from .registry import Registry

log = structlog.get_logger("server.ws")

_DONE = {WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR}
#: text frames a read loop handles between two yields to the event loop (docs/benchmarks.md)
FRAMES_PER_TURN = 4


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
    """The upgrade guards, the upgrade, then the connection's whole life. The middlewares hand
    this endpoint its request untouched, and it answers for itself (refusals and a failed
    handshake as JSON, the answer counted): a connection keeps this one frame, not one more
    per middleware (~0.3 KiB each, docs/benchmarks.md, "Idle memory"). The steps before the
    read loop are functions that return, so they keep no frame either."""
    node = request.app[NODE]
    try:
        lease = await request.app[GUARD].admit(request)
        if not isinstance(lease, Lease):
            return counted(request, lease)
        try:
            ws = await _upgrade(request, node)
            if not isinstance(ws, web.WebSocketResponse):
                return ws
            guard = MaskGuard.install(request)  # before any frame is read, the auth frame too
            authed = await _identify(node, ws, lease)
            if authed is None:
                return ws
            claims, auth_frame_id = authed
            user = user_from_claims(claims)
            conn = Connection(ws, user, remote=lease.ip,
                              request=request, max_bytes=node.config.server.write_buffer_size,
                              max_messages=node.config.server.max_queued_messages)
            bind_connection(conn)  # conn_id, user_id on every line of this task
            registry, pipeline = request.app[REGISTRY], request.app[PIPELINE]
            try:
                await open_connection(node, registry, conn, claims,
                                      rooms=request.query.get("rooms", ""), reply_to=auth_frame_id)
                await _read_loop(node, registry, pipeline, conn)
                if guard is not None and guard.refused:
                    conn.close_code = CloseCode.PROTOCOL_ERROR
            finally:
                # before the on_disconnect hooks: a task they start (presence's departure timer)
                # copies this context, and would keep the connection for its whole life
                unbind_connection()
                await close_connection(node, registry, conn)
            return ws
        finally:
            lease.release()
    finally:
        request_done(request)


async def _upgrade(request: web.Request, node: Node) -> web.StreamResponse:
    """The prepared WebSocket (counted as a 101), or the JSON answer to a bad handshake."""
    cfg = node.config.server
    ws = web.WebSocketResponse(
        # aiohttp refuses a frame of max_msg_size bytes or more on the wire, but an inflated
        # one only over max_msg_size: one more byte, so that a frame of exactly
        # server.max_message_size bytes is served; an inflated frame of exactly one byte over
        # is closed by the read loop (_inflated_too_big)
        max_msg_size=cfg.max_message_size + 1,
        compress=cfg.compression,
        autoping=False,
        autoclose=False,  # answer_close() answers the client's close
    )
    try:
        await ws.prepare(request)
    except web.HTTPException as exc:  # not a WebSocket handshake
        return counted(request, http_error(exc))
    return counted(request, ws)


async def _identify(node: Node, ws: web.WebSocketResponse,
                    lease: Lease) -> tuple[dict[str, Any], str | None] | None:
    """The claims (from the upgrade's token, or else from an ``auth`` first frame) and the id
    of the auth frame; None when the socket was closed instead."""
    if lease.claims is not None:
        return lease.claims, None
    authed = await _first_frame_auth(ws, node)
    if authed is None:
        return None
    if not lease.bind_user(str(authed[0]["sub"])):
        log.info("upgrade_refused", via="first_frame", reason="per_user_cap",
                 user_id=authed[0]["sub"])
        await ws.close(code=CloseCode.TRY_AGAIN_LATER, message=b"too many connections for this user")
        return None
    return authed


def settle_writer_layout() -> None:
    """Call once, before serving. CPython 3.11 gives a class's instances one shared attribute
    layout, closed to new names once ~25 instances exist. aiohttp's ``StreamWriter`` (one per
    request, kept by a WebSocket all its life) gets ``buffer_size`` and ``output_size`` only
    at its first write: when a burst of handshakes makes 25 writers before any of them writes,
    every later one gets a dict of its own, ~0.4 KiB more per connection. A writer written
    here first puts both names in the layout."""
    writer = StreamWriter(cast(Any, None), cast(Any, None))
    writer.buffer_size = writer.output_size = 0


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
