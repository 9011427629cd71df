"""The frame path (docs/pipeline.md): one text frame decoded, checked against its envelope and
its type's schema, through the pipeline's stages, then dispatched to its type's handler or to
the core's own types (``ping``, ``refresh``, ``auth``). A refusal is answered with one error
frame; invalid frames are counted, and too many close the connection with 4501.

The WebSocket read loop (``ws.py``) hands every text frame here; the HTTP API comes this way
too: ``POST /api/messages`` through :func:`handle_frame` on a connection without a socket,
``POST /api/rooms/{id}/join`` and ``/leave`` through :func:`dispatch` on each of the user's
open connections.
"""

from __future__ import annotations

import dataclasses
import time

from .connection import Connection
from .errors import AuthError, CloseConnection, MessageRejected
from .metrics import INVALID
from .node import Node
from .pipeline import Pipeline
from .plugin_api import Context
from .protocol import CloseCode, Envelope, ErrorCode, envelope, error_frame, frame_id, parse_json
from .protocol.core_types import CORE_TYPES
from .registry import Registry

#: refusals that count towards ``messages.max_invalid_frames`` (close 4501)
COUNTED_AS_INVALID = frozenset({ErrorCode.INVALID_JSON, ErrorCode.INVALID_MESSAGE,
                                ErrorCode.UNKNOWN_MESSAGE_TYPE, ErrorCode.UNSUPPORTED_FRAME})


#: seconds a client waits before sending again a frame refused with UNAVAILABLE
UNAVAILABLE_RETRY = 2.0


async def handle_frame(node: Node, registry: Registry, pipeline: Pipeline, conn: Connection,
                       data: str) -> None:
    """One text frame through the pipeline in its order (server/pipeline/), then dispatch."""
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
        reject(node, pipeline, conn, exc, reply_to)
    except CloseConnection as exc:
        conn.close(exc.code, exc.reason)
    except Exception as exc:
        if isinstance(exc, node.backend.unavailable):  # Redis is away: the frame did nothing
            node.backend_down(exc)
            node.metrics.frame_rejected(ErrorCode.UNAVAILABLE)
            conn.send(error_frame(ErrorCode.UNAVAILABLE, "the backend is unreachable: nothing was "
                                  "stored or delivered; try again", reply_to=reply_to,
                                  retry_after=UNAVAILABLE_RETRY))
            return
        conn.log.exception("handler_failed", type=env.type if env else None)
        node.metrics.frame_rejected(ErrorCode.INTERNAL_ERROR)
        conn.send(error_frame(ErrorCode.INTERNAL_ERROR, "internal error while handling the frame",
                              reply_to=reply_to))
    finally:
        node.metrics.frame_handled(env.type if env is not None else INVALID,
                                   time.perf_counter() - started)


def unsupported_frame(node: Node, pipeline: Pipeline, conn: Connection) -> None:
    """A binary frame: ``UNSUPPORTED_FRAME``, counted as an invalid frame."""
    node.metrics.frame_handled(INVALID, 0.0)
    reject(node, pipeline, conn, MessageRejected(ErrorCode.UNSUPPORTED_FRAME,
                                                 "binary frames are not accepted"), None)


def reject(node: Node, pipeline: Pipeline, conn: Connection, exc: MessageRejected,
           reply_to: str | None) -> None:
    """Answer a refused frame with its error frame; close with 4501 when it was one invalid
    frame too many (``messages.max_invalid_frames`` within ``messages.invalid_frames_window``)."""
    conn.log.info("frame_rejected", code=exc.code, reason=exc.message)
    node.metrics.frame_rejected(exc.code)
    conn.send(error_frame(exc.code, exc.message, reply_to=reply_to, retry_after=exc.retry_after,
                          details=exc.details))
    if exc.code in COUNTED_AS_INVALID:
        conn.invalid_frames += 1
        if pipeline.invalid_frame(conn):
            conn.close(CloseCode.TOO_MANY_INVALID, "too many invalid frames")


async def dispatch(node: Node, registry: Registry, conn: Connection, env: Envelope) -> None:
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


async def _core(node: Node, conn: Connection, env: Envelope) -> None:
    """The core's own types: ``ping``, ``refresh`` (a new token for the same ``sub``) and
    ``auth`` (refused: the connection is authenticated already)."""
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
        # the connection holds the new token from now on: its claims (``jti``) are what a
        # revocation matches (``Node._revoke``); the identity (id, username, roles) stays.
        # Nothing awaited since verify() checked the revocations, so none can slip in between.
        conn.user = dataclasses.replace(conn.user, claims=claims)
        conn.schedule_expiry(node.auth.deadline(claims))
        conn.log.info("token_refreshed", expires_at=expires_at)
        node.send_to_connection(conn, "refreshed", {"expires_at": expires_at}, reply_to=env.id)
    else:  # "auth", the last core type
        raise MessageRejected(ErrorCode.INVALID_MESSAGE, "already authenticated; use 'refresh'")
