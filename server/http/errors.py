"""The HTTP API's error answers: every one is ``{"error": {"code", "message", ...}}``
(:class:`ErrorBody`), raised by a handler as :class:`ApiError`, turned from a frame's
``MessageRejected`` by :func:`rejected` or from a validation error by :func:`invalid_request`;
and :func:`error_middleware`, which gives aiohttp's own errors and unexpected exceptions the
same shape and counts every answer in the metrics."""

from __future__ import annotations

import math
from typing import Any, Awaitable, Callable

import structlog
from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict, ValidationError

from ..config import validation_messages
from ..errors import MessageRejected
from ..keys import NODE, WS_ROUTE
from ..protocol import ErrorCode
from .util import json_error

log = structlog.get_logger(__name__)


class HttpCode:
    """Error codes only the HTTP API uses; the others are protocol.ErrorCode's."""

    INVALID_REQUEST = "INVALID_REQUEST"
    ROOM_EXISTS = "ROOM_EXISTS"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    NOT_READY = "NOT_READY"
    INVALID_CONFIG = "INVALID_CONFIG"
    NO_CONNECTION = "NO_CONNECTION"


#: the status of each ``MessageRejected`` code when a call goes the way of a frame
STATUS_OF: dict[str, int] = {
    ErrorCode.INVALID_JSON: 400, ErrorCode.INVALID_MESSAGE: 400,
    ErrorCode.UNKNOWN_MESSAGE_TYPE: 400, ErrorCode.UNAUTHORIZED: 401, ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_IN_ROOM: 403, ErrorCode.NOT_FOUND: 404, ErrorCode.ROOM_FULL: 409,
    ErrorCode.ROOM_LIMIT_REACHED: 409, ErrorCode.MESSAGE_TOO_LONG: 413,
    ErrorCode.MESSAGE_FILTERED: 422, ErrorCode.RATE_LIMITED: 429, ErrorCode.INTERNAL_ERROR: 500,
}
_CODE_OF_STATUS = {400: HttpCode.INVALID_REQUEST, 401: ErrorCode.UNAUTHORIZED,
                   403: ErrorCode.FORBIDDEN, 404: ErrorCode.NOT_FOUND,
                   405: HttpCode.METHOD_NOT_ALLOWED, 413: HttpCode.PAYLOAD_TOO_LARGE}


class ApiError(Exception):
    """An error answer: ``{"error": {"code", "message", ...extra}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, *,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra

    def response(self) -> web.Response:
        return json_error(self.status, self.code, self.message, headers=self.headers, **self.extra)


def rejected(exc: MessageRejected) -> ApiError:
    """The HTTP form of an error a frame would have got."""
    if exc.retry_after is None:
        return ApiError(STATUS_OF.get(exc.code, 400), exc.code, exc.message)
    return ApiError(STATUS_OF.get(exc.code, 400), exc.code, exc.message,
                    headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))},
                    retry_after=exc.retry_after)


def invalid_request(exc: ValidationError, prefix: tuple[str, ...] = ()) -> ApiError:
    """400 listing each problem with its key path, the first one's as ``field``."""
    problems = validation_messages(exc, prefix)
    at = problems[0].partition(": ")[0]
    if at == "(top level)":
        return ApiError(400, HttpCode.INVALID_REQUEST, "; ".join(problems))
    return ApiError(400, HttpCode.INVALID_REQUEST, "; ".join(problems), field=at)


def not_found(what: str) -> ApiError:
    return ApiError(404, ErrorCode.NOT_FOUND, f"{what} does not exist")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """Every error answer: a code from docs/api.md, a readable message and, for a bad
    request, the field at fault."""

    error: ErrorDetail


Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
def error_middleware(request: web.Request, handler: Endpoint) -> Awaitable[web.StreamResponse]:
    """Every error as a JSON body (aiohttp's own 404, 405 and 413 included; an unexpected
    exception is a logged 500), and every answer counted in the metrics. The WebSocket
    endpoint does both for itself (:func:`http_error`, :func:`counted`): it is handed its
    request untouched, so nothing of this stays suspended for as long as a connection lives."""
    if request.match_info.route.name == WS_ROUTE:
        return handler(request)
    return _answered(request, handler)


async def _answered(request: web.Request, handler: Endpoint) -> web.StreamResponse:
    upgrade = request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = http_error(exc)
    except Exception as exc:
        if upgrade:  # the WebSocket may be open already: no answer to replace; aiohttp logs it
            raise
        if isinstance(exc, request.app[NODE].backend.unavailable):
            request.app[NODE].backend_down(exc)
            response = json_error(503, ErrorCode.UNAVAILABLE, "the backend is unreachable; try "
                                  "again", headers={hdrs.RETRY_AFTER: "2"}, retry_after=2)
        else:
            log.exception("http_handler_failed", method=request.method, path=request.path)
            response = json_error(500, ErrorCode.INTERNAL_ERROR, "internal error")
    return counted(request, response)


def http_error(exc: web.HTTPException) -> web.Response:
    """aiohttp's error (a 400 for a bad handshake, a 405...) as a JSON body."""
    headers = {k: v for k, v in exc.headers.items() if k in (hdrs.ALLOW, hdrs.RETRY_AFTER)}
    return json_error(exc.status, _CODE_OF_STATUS.get(exc.status, f"HTTP_{exc.status}"),
                      exc.reason, headers=headers)


def counted(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """``response``, counted in ``switchboard_http_requests_total``."""
    route = request.match_info.route.resource
    request.app[NODE].metrics.http_request(
        request.method, route.canonical if route is not None else "unmatched", response.status)
    return response
