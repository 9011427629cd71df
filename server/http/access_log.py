"""aiohttp's access log as structlog events: method, path (never the query string, which can
hold a token), status, size, duration and the client address after trusted proxies."""

from __future__ import annotations

import structlog
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from .guards import CLIENT_IP


_log = structlog.get_logger("server.access")


class AccessLogger(AbstractAccessLogger):
    """Logs method, path (never the query string), status, size, duration and client address.
    aiohttp makes one per connection (a WebSocket's lasts as long as it does): it holds
    nothing of its own."""

    __slots__ = ()

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        _log.info(
            "http_request", method=request.method, path=request.path, status=response.status,
            bytes=response.body_length, duration=round(time, 4),
            remote=request.get(CLIENT_IP) or request.remote,
        )

    @property
    def enabled(self) -> bool:
        return True
