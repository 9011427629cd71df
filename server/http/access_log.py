"""aiohttp's access log as structlog events: method, path (never the query string, which can
hold a token), status, size, duration and the client address after trusted proxies."""

from __future__ import annotations

import logging

import structlog
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from .guards import CLIENT_IP


class AccessLogger(AbstractAccessLogger):
    """Logs method, path (never the query string), status, size, duration and client address."""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._log = structlog.get_logger("server.access")

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self._log.info(
            "http_request", method=request.method, path=request.path, status=response.status,
            bytes=response.body_length, duration=round(time, 4),
            remote=request.get(CLIENT_IP) or request.remote,
        )

    @property
    def enabled(self) -> bool:
        return True
