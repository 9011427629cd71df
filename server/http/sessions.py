"""The bearer of an HTTP call as a connection without a socket (:class:`HttpConnection`), for
the path a frame takes (``POST /api/messages``), and each user's state of such connections
across calls (:class:`HttpSessions`: the rate limit's buckets)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, cast

import orjson
import structlog
from aiohttp import web

from ..config import Config
from ..connection import Connection
from ..identity import User

log = structlog.get_logger(__name__)

#: most users whose HTTP "connection" state (rate-limit buckets) is kept at once
MAX_HTTP_SESSIONS = 10000


class HttpConnection(Connection):
    """The bearer of one HTTP call as a connection without a socket, for the path a frame
    takes. It is in the rooms its user is in; its per-connection state (the rate limit's
    buckets) lasts across the user's calls; what it is sent is kept in ``frames``."""

    __slots__ = ("frames",)

    def __init__(self, user: User, request: web.Request, state: dict[str, Any],
                 rooms: set[str]) -> None:
        super().__init__(cast(web.WebSocketResponse, None), user, remote=request.remote or "",
                         log=None, max_bytes=0, max_messages=0, request=request)
        self.log = log.bind(conn_id=self.id, user_id=user.id, via="http")
        self.state = state
        self.rooms = rooms
        self.frames: list[dict[str, Any]] = []

    def send(self, payload: bytes, *, droppable: bool = False, framed: bytes | None = None) -> bool:
        self.frames.append(orjson.loads(payload))
        return True

    def close(self, code: int, reason: str = "") -> None:
        self.closing = True
        self.close_code = code

    def reply(self, frame_id: str) -> dict[str, Any] | None:
        return next((f for f in self.frames if f.get("reply_to") == frame_id), None)


class HttpSessions:
    """Each user's HTTP connection state, least recently used dropped first past
    ``MAX_HTTP_SESSIONS``; all of it dropped when the config changes (it holds buckets built
    from the old limits)."""

    def __init__(self) -> None:
        self._states: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._config: Config | None = None

    def state(self, user_id: str, config: Config) -> dict[str, Any]:
        if config is not self._config:
            self._states.clear()
            self._config = config
        state = self._states.get(user_id)
        if state is None:
            state = self._states[user_id] = {}
            if len(self._states) > MAX_HTTP_SESSIONS:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(user_id)
        return state


HTTP_SESSIONS: web.AppKey[HttpSessions] = web.AppKey("switchboard_http_sessions", HttpSessions)
