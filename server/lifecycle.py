"""A connection's life around its read loop: registered with the hub and the metrics, in the
cluster's presence, joined to the default rooms and those of ``?rooms=``, greeted with the
``connected`` frame, announced to the plugins' ``on_connect``; and when the loop ends, the
reverse: out of the hub, the socket closed, out of its rooms and the presence, the plugins'
``on_disconnect``, counted closed.

``ws.py`` runs its read loop between :func:`open_connection` and :func:`close_connection`::

    try:
        await open_connection(node, registry, conn, claims, rooms="a,b", reply_to=None)
        ...  # read frames until the socket closes
    finally:
        await close_connection(node, registry, conn)

Two calls, not an async context manager: a connection's handler is suspended in its read loop
for all its life, and a context manager's generator and wrapper would stay with it (~0.6 KiB
per connection) for nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable

from .connection import Connection
from .errors import MessageRejected
from .node import Node
from .plugin_api import Context
from .protocol import CloseCode, error_frame
from .registry import Registry


async def open_connection(node: Node, registry: Registry, conn: Connection,
                          claims: dict[str, Any], *, rooms: str, reply_to: str | None) -> None:
    """Open the connection; call :func:`close_connection` once it ends, in a ``finally``
    around this call too, whatever either raises. ``rooms`` is the ``?rooms=`` query
    (comma-separated); ``reply_to`` the id of the auth frame the ``connected`` frame answers,
    if one did."""
    node.metrics.connection_opened()
    conn.start()
    try:
        await node.attach(conn)
        if node.hub.draining:  # admitted just before the drain began: close_all() missed it
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
        await _open(node, registry, conn, claims, rooms, reply_to)
    except node.backend.unavailable as exc:  # Redis is away: come back in a while
        node.backend_down(exc)
        conn.close(CloseCode.TRY_AGAIN_LATER, "backend unavailable")


async def _quietly(node: Node, work: Awaitable[Any]) -> None:
    """A step of closing that needs the backend: done if it can be, never raising for an
    unreachable backend (the connection is gone either way)."""
    try:
        await work
    except node.backend.unavailable as exc:
        node.backend_down(exc)


async def _open(node: Node, registry: Registry, conn: Connection, claims: dict[str, Any],
                query_rooms: str, reply_to: str | None) -> None:
    cfg = node.config
    count = await node.backend.presence.add_connection(
        conn.user.id, conn.id, {"username": conn.user.username, "connected_at": conn.connected_at,
                                "node": node.node_id})
    cap = cfg.security.max_connections_per_user
    if cap and count > cap:  # the upgrade's cap counts this node; this one counts every node
        conn.log.info("upgrade_refused", reason="per_user_cap", user_id=conn.user.id,
                      connections=count)
        conn.close(CloseCode.TRY_AGAIN_LATER, "too many connections for this user")
        return
    wanted = list(cfg.rooms.default_rooms)
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
    }, reply_to=reply_to)
    conn.task_log.info("connection_opened", remote=conn.remote, rooms=sorted(conn.rooms))
    for plugin in registry.plugins:
        try:
            await plugin.on_connect(Context(conn, None, node, plugin))
        except Exception:
            conn.log.exception("plugin_hook_failed", plugin=plugin.name, hook="on_connect")


async def close_connection(node: Node, registry: Registry, conn: Connection) -> None:
    """Everything :func:`open_connection` did, undone."""
    ws = conn.ws
    await _quietly(node, node.detach(conn))
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
        await _quietly(node, node.leave(conn, room, closing=True))
    conn.rooms = rooms  # on_disconnect hooks see the rooms the connection was in
    await _quietly(node, node.backend.presence.remove_connection(conn.user.id, conn.id))
    for plugin in registry.plugins:
        try:
            await plugin.on_disconnect(Context(conn, None, node, plugin))
        except Exception:
            conn.log.exception("plugin_hook_failed", plugin=plugin.name, hook="on_disconnect")
    _drop_tracebacks(ws.exception())
    closed_with = int(conn.close_code or ws.close_code or 0)
    node.metrics.connection_closed(closed_with)
    conn.log.info("connection_closed", code=closed_with,
                  duration=round(time.time() - conn.connected_at, 3))


def _drop_tracebacks(exc: BaseException | None) -> None:
    """The tracebacks of what ended a socket, and of what that was raised during: aiohttp keeps
    the exception (``ws.exception()``), its traceback keeps the frames that raised it, and
    those keep the WebSocket, its request and buffers: a cycle of a whole connection (~10 KiB)
    that only a full collection of the cyclic collector would free (server/collector.py).
    Nothing reads those tracebacks once the connection is closed."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__
