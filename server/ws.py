"""The WebSocket endpoint: authentication after the upgrade, the single read loop, the inbound
pipeline and dispatch to plugin handlers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiohttp import WSMsgType, web
from pydantic import BaseModel, Field

from .auth import user_from_claims
from .connection import Connection
from .errors import AuthError, CloseConnection, MessageRejected
from .http.guards import CLAIMS, CLIENT_IP, LEASE
from .keys import PIPELINE, REGISTRY, NODE
from .metrics import INVALID
from .http.openapi import describe
from .pipeline import Pipeline
from .plugin_api import Context
from .protocol import (CloseCode, ErrorCode, Envelope, envelope, error_frame, frame_id,
                       parse_json)
from .registry import CORE_TYPES
from .node import Node

log = structlog.get_logger("server.ws")

_COUNTED_AS_INVALID = {ErrorCode.INVALID_JSON, ErrorCode.INVALID_MESSAGE,
                       ErrorCode.UNKNOWN_MESSAGE_TYPE, ErrorCode.UNSUPPORTED_FRAME}
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
        if msg.type not in _DONE:
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
        max_msg_size=cfg.server.max_message_size,
        compress=cfg.server.compression,
        autoping=False,
        autoclose=True,
    )
    await ws.prepare(request)
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
    try:
        await _serve(request, node, conn, claims, auth_frame_id)
    finally:
        structlog.contextvars.unbind_contextvars("conn_id", "user_id")
    return ws


async def _serve(request: web.Request, node: Node, conn: Connection,
                 claims: dict[str, Any], auth_frame_id: str | None) -> None:
    cfg = node.config
    registry = request.app[REGISTRY]
    pipeline = request.app[PIPELINE]
    hub = node.hub
    hub.add(conn)
    node.metrics.connection_opened()
    conn.start()
    if hub.draining:  # admitted just before the drain began: close_all() did not see it
        conn.close(CloseCode.GOING_AWAY, "server shutting down")
    ws = conn.ws
    try:
        await node.backend.presence.add_connection(
            conn.user.id, conn.id, {"username": conn.user.username, "connected_at": conn.connected_at,
                                    "node": node.node_id})
        wanted = list(cfg.rooms.default_rooms)
        query_rooms = request.query.get("rooms", "")
        wanted += [r.strip() for r in query_rooms.split(",") if r.strip() and r.strip() not in wanted]
        for room in wanted:
            try:
                await node.join(conn, room)
            except MessageRejected as exc:
                conn.log.info("connect_join_refused", room=room, code=exc.code)
                conn.send(error_frame(exc.code, exc.message))
        exp = claims.get("exp")
        conn.schedule_expiry(node.auth.deadline(claims))
        node.send_to_connection(conn, "connected", {
            "connection_id": conn.id,
            "user": conn.user.public(),
            "online_count": await node.backend.presence.online_count(),
            "rooms": sorted(conn.rooms),
            "heartbeat": {"interval": cfg.server.ping_period, "timeout": cfg.server.pong_wait},
            "expires_at": int(exp) if exp is not None else None,
            "node": node.node_id,
        }, reply_to=auth_frame_id)
        conn.log.info("connection_opened", remote=conn.remote, rooms=sorted(conn.rooms))
        for plugin in registry.plugins:
            try:
                await plugin.on_connect(Context(conn, None, node, plugin))
            except Exception:
                conn.log.exception("plugin_hook_failed", plugin=plugin.name, hook="on_connect")
        await _read_loop(node, registry, pipeline, conn)
    finally:
        hub.remove(conn)
        await conn.finish()
        if not ws.closed:
            code = conn.close_code or CloseCode.NORMAL
            try:
                async with asyncio.timeout(2.0):
                    await ws.close(code=int(code))
            except (TimeoutError, ConnectionError, RuntimeError):
                pass
        rooms = set(conn.rooms)
        for room in rooms:
            await node.leave(conn, room, closing=True)
        conn.rooms = rooms  # on_disconnect hooks see the rooms the connection was in
        await node.backend.presence.remove_connection(conn.user.id, conn.id)
        for plugin in registry.plugins:
            try:
                await plugin.on_disconnect(Context(conn, None, node, plugin))
            except Exception:
                conn.log.exception("plugin_hook_failed", plugin=plugin.name, hook="on_disconnect")
        closed_with = int(conn.close_code or ws.close_code or 0)
        node.metrics.connection_closed(closed_with)
        conn.log.info("connection_closed", code=closed_with,
                      duration=round(time.time() - conn.connected_at, 3))


async def _read_loop(node: Node, registry: Any, pipeline: Pipeline, conn: Connection) -> None:
    ws = conn.ws
    stats = node.stats
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
            node.metrics.frame_handled(INVALID, 0.0)
            _reject(node, pipeline, conn, MessageRejected(ErrorCode.UNSUPPORTED_FRAME,
                                                              "binary frames are not accepted"), None)
        elif kind in _DONE:
            if kind is WSMsgType.ERROR:
                conn.log.info("connection_error", error=str(ws.exception()), code=ws.close_code)
            return


def _reject(node: Node, pipeline: Pipeline, conn: Connection, exc: MessageRejected,
            reply_to: str | None) -> None:
    conn.log.info("frame_rejected", code=exc.code, reason=exc.message)
    node.metrics.frame_rejected(exc.code)
    conn.send(error_frame(exc.code, exc.message, reply_to=reply_to, retry_after=exc.retry_after))
    if exc.code in _COUNTED_AS_INVALID:
        conn.invalid_frames += 1
        if pipeline.invalid_frame(conn):
            conn.close(CloseCode.TOO_MANY_INVALID, "too many invalid frames")


async def handle_frame(node: Node, registry: Any, pipeline: Pipeline, conn: Connection,
                       data: str) -> None:
    """One text frame through the pipeline in its order (server/pipeline.py), then dispatch.
    ``POST /api/messages`` comes this way too, on a connection of its own (server/api.py)."""
    started = time.perf_counter()
    reply_to: str | None = None
    env = None
    try:
        obj = parse_json(data)
        reply_to = frame_id(obj)
        env = envelope(obj)
        handler = registry.handlers.get(env.type)
        if handler is not None:
            env.payload = handler.validate(env.data)
        elif env.type not in CORE_TYPES:
            raise MessageRejected(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"no plugin handles type {env.type!r}")
        result = await pipeline.run(conn, env)
        if result is None:
            return
        await dispatch(node, registry, conn, result)
    except MessageRejected as exc:
        _reject(node, pipeline, conn, exc, reply_to)
    except CloseConnection as exc:
        conn.close(exc.code, exc.reason)
    except Exception:
        conn.log.exception("handler_failed", type=env.type if env else None)
        node.metrics.frame_rejected(ErrorCode.INTERNAL_ERROR)
        conn.send(error_frame(ErrorCode.INTERNAL_ERROR, "internal error while handling the frame",
                              reply_to=reply_to))
    finally:
        node.metrics.frame_handled(env.type if env is not None else INVALID,
                                       time.perf_counter() - started)


async def dispatch(node: Node, registry: Any, conn: Connection, env: Envelope) -> None:
    """The last step of a frame: its type's permission (``FORBIDDEN``), then its handler. The
    HTTP API acts on a user's open connections this way (``POST /api/rooms/{id}/join``)."""
    roles = node.config.permissions.types.get(env.type)
    if roles is not None and not conn.user.has_any_role(roles):
        raise MessageRejected(ErrorCode.FORBIDDEN, f"your roles may not send {env.type!r}")
    handler = registry.handlers.get(env.type)
    if handler is None:
        await _core(node, conn, env)
    else:
        await handler.func(Context(conn, env, node, handler.plugin), env.payload)


async def _core(node: Node, conn: Connection, env: Any) -> None:
    if env.type == "ping":
        node.send_to_connection(conn, "pong", {}, reply_to=env.id)
    elif env.type == "refresh":
        token = env.data.get("token")
        if not isinstance(token, str) or not token:
            raise MessageRejected(ErrorCode.INVALID_MESSAGE, "data.token is required")
        try:
            claims = await node.auth.verify(token)
        except AuthError as exc:
            raise MessageRejected(ErrorCode.UNAUTHORIZED, f"refresh refused: {exc}") from None
        if claims["sub"] != conn.user.id:
            raise MessageRejected(ErrorCode.FORBIDDEN, "refresh token is for another user")
        exp = claims.get("exp")
        expires_at = int(exp) if exp is not None else None
        conn.schedule_expiry(node.auth.deadline(claims))
        conn.log.info("token_refreshed", expires_at=expires_at)
        node.send_to_connection(conn, "refreshed", {"expires_at": expires_at}, reply_to=env.id)
    else:  # "auth", the last core type
        raise MessageRejected(ErrorCode.INVALID_MESSAGE, "already authenticated; use 'refresh'")
