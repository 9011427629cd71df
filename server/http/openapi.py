"""HTTP routes declared once, with everything the OpenAPI 3.1 document needs, and that document
(``GET /api/openapi.json``) generated from the application's router at request time.

A route is declared with :class:`Routes`, which also parses and checks what the route takes
before the handler runs: the caller (401/403), the query and the JSON body (400 naming the field
at fault, 413 over ``api.max_body_size``). The handler returns a pydantic model (the response
body, documented by its class) or any ``web.StreamResponse``; it may raise :class:`ApiError` or
``MessageRejected`` (mapped to a status by :data:`STATUS_OF`)::

    from server.http.openapi import Caller, Routes

    routes = Routes()

    @routes.get("/api/things/{id}", summary="One thing", access="user", query=Page,
                response=Thing, errors=(404,))
    async def thing(request: web.Request, caller: Caller, query: Page) -> Thing:
        ...

    app.router.add_routes(routes)           # in app.py, like any aiohttp route table

A handler registered another way (``app.router.add_get``) is documented with :func:`describe`.
A route with neither is missing from the document, and tests/test_openapi.py fails.
"""

from __future__ import annotations

import hashlib
import hmac
import http
import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator, Literal, Sequence, cast, overload

import orjson
import structlog
from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.json_schema import models_json_schema

from .. import __version__
from ..auth import user_from_claims
from ..config import Config, validation_messages
from ..errors import AuthError, MessageRejected
from .util import json_error
from ..keys import NODE
from .guards import bearer_token
from ..identity import User
from ..protocol import ErrorCode

log = structlog.get_logger(__name__)

#: who may call: ``anyone``; ``user``: a valid bearer token or an API key; ``bearer``: a user's
#: own bearer token (the call acts as that user); ``admin``: a role in ``api.admin_roles`` or an
#: API key. A callable picks one of these from the running config.
Access = Literal["anyone", "user", "bearer", "admin"]
AccessRule = Access | Callable[[Config], Access]
JSON = "application/json"
OPERATION_ATTR = "__switchboard_operation__"
_REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"\{(\w+)\}")


# --- errors -----------------------------------------------------------------------------------
class HttpCode:
    """Error codes only the HTTP API uses; the others are protocol.ErrorCode's."""

    INVALID_REQUEST = "INVALID_REQUEST"
    ROOM_EXISTS = "ROOM_EXISTS"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    NOT_READY = "NOT_READY"
    INVALID_CONFIG = "INVALID_CONFIG"


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


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """Every error answer: a code from docs/api.md, a readable message and, for a bad
    request, the field at fault."""

    error: ErrorDetail


# --- who calls --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Caller:
    """The verified caller: a user (bearer token), an admin (admin role or API key), or neither
    (an ``anyone`` route)."""

    user: User | None
    admin: bool

    @property
    def name(self) -> str:
        """Who did it, for logs: the user id, or ``api_key`` (never the key)."""
        return self.user.id if self.user is not None else "api_key" if self.admin else "anonymous"

    def need_user(self) -> User:
        assert self.user is not None, "a 'bearer' route always has a user"
        return self.user


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def api_key_valid(given: str, keys: Sequence[str]) -> bool:
    """Whether ``given`` is one of ``keys``, in a time that does not depend on how much of a key
    it matches (digests compared in constant time, every key tried)."""
    digest = _digest(given)
    found = False
    for key in keys:
        found |= hmac.compare_digest(digest, _digest(key))
    return found


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, ErrorCode.UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"})


async def authorize(request: web.Request, access: Access) -> Caller:
    """The caller of ``request`` if ``access`` lets them call; ApiError 401 or 403 otherwise."""
    if access == "anyone":
        return Caller(None, False)
    node = request.app[NODE]
    cfg = node.config.api
    admin = False
    key = request.headers.get("X-API-Key")
    if key is not None:
        if not api_key_valid(key, cfg.keys):
            raise _unauthorized("invalid API key")
        admin = True
    user: User | None = None
    token = bearer_token(request)
    if token is None and hdrs.AUTHORIZATION in request.headers:
        raise _unauthorized("the Authorization header must be Bearer <token>")
    if token is not None:
        try:
            user = user_from_claims(await node.auth.verify(token))
        except AuthError as exc:
            raise _unauthorized(str(exc)) from None
        admin = admin or user.has_any_role(cfg.admin_roles)
    if access == "bearer" and user is None:
        raise _unauthorized("this call acts as a user: it needs the user's Authorization: Bearer "
                            "<token> (an API key is no user)")
    if user is None and not admin:
        raise _unauthorized("needs Authorization: Bearer <token> or an X-API-Key")
    if access == "admin" and not admin:
        raise ApiError(403, ErrorCode.FORBIDDEN, "needs a role in api.admin_roles or an API key")
    return Caller(user, admin)


# --- parsing ----------------------------------------------------------------------------------
def invalid_request(exc: ValidationError, prefix: tuple[str, ...] = ()) -> ApiError:
    """400 listing each problem with its key path, the first one's as ``field``."""
    problems = validation_messages(exc, prefix)
    at = problems[0].partition(": ")[0]
    if at == "(top level)":
        return ApiError(400, HttpCode.INVALID_REQUEST, "; ".join(problems))
    return ApiError(400, HttpCode.INVALID_REQUEST, "; ".join(problems), field=at)


def _validate(model: type[BaseModel], data: Any, *, strict: bool) -> BaseModel:
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise invalid_request(exc) from None


async def _json_body(request: web.Request) -> Any:
    limit = request.app[NODE].config.api.max_body_size
    too_large = ApiError(413, HttpCode.PAYLOAD_TOO_LARGE, f"the body is over {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    raw = await request.read()
    if len(raw) > limit:
        raise too_large
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, ErrorCode.INVALID_JSON, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, ErrorCode.INVALID_JSON, "the body must be a JSON object")
    return body


# --- declaring --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Operation:
    summary: str
    access: AccessRule = "anyone"
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    content_type: str = JSON
    errors: tuple[int, ...] = ()
    description: str = ""
    tags: tuple[str, ...] = ()

    def access_for(self, config: Config) -> Access:
        return self.access(config) if callable(self.access) else self.access


Handler = Callable[..., Awaitable[Any]]


Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _endpoint(op: Operation, handler: Handler) -> Endpoint:
    wants = set(inspect.signature(handler).parameters)
    for name, given in (("query", op.query), ("body", op.body)):
        if (name in wants) != (given is not None):
            raise TypeError(f"{handler.__qualname__}: takes {name!r} exactly when the route "
                            f"declares {name}=")

    async def endpoint(request: web.Request) -> web.StreamResponse:
        kwargs: dict[str, Any] = {}
        try:
            caller = await authorize(request, op.access_for(request.app[NODE].config))
            if "caller" in wants:
                kwargs["caller"] = caller
            if op.query is not None:
                kwargs["query"] = _validate(op.query, dict(request.query), strict=False)
            if op.body is not None:  # JSON has types: "1" is not a number, false is not 0
                kwargs["body"] = _validate(op.body, await _json_body(request), strict=True)
            result = await handler(request, **kwargs)
        except ApiError as exc:
            return exc.response()
        except MessageRejected as exc:
            return rejected(exc).response()
        if isinstance(result, web.StreamResponse):
            return result
        return web.Response(text=result.model_dump_json(), status=op.status, content_type=JSON)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    setattr(endpoint, OPERATION_ATTR, op)
    return endpoint


class Routes(Sequence[web.AbstractRouteDef]):
    """A route table (give it to ``app.router.add_routes``) whose routes are documented."""

    def __init__(self) -> None:
        self._table = web.RouteTableDef()

    @overload
    def __getitem__(self, index: int) -> web.AbstractRouteDef: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[web.AbstractRouteDef]: ...

    def __getitem__(self, index: int | slice) -> Any:
        return self._table[index]

    def __iter__(self) -> Iterator[web.AbstractRouteDef]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def route(self, method: str, path: str, *, summary: str, access: AccessRule = "anyone",
              query: type[BaseModel] | None = None, body: type[BaseModel] | None = None,
              response: type[BaseModel] | None = None, status: int = 200,
              content_type: str = JSON, errors: tuple[int, ...] = (), description: str = "",
              tags: tuple[str, ...] = ()) -> Callable[[Handler], Handler]:
        op = Operation(summary, access, query, body, response, status, content_type, errors,
                       description, tags)

        def register(handler: Handler) -> Handler:
            self._table.route(method, path)(_endpoint(op, handler))
            return handler

        return register

    def get(self, path: str, **op: Any) -> Callable[[Handler], Handler]:
        return self.route(hdrs.METH_GET, path, **op)

    def post(self, path: str, **op: Any) -> Callable[[Handler], Handler]:
        return self.route(hdrs.METH_POST, path, **op)

    def delete(self, path: str, **op: Any) -> Callable[[Handler], Handler]:
        return self.route(hdrs.METH_DELETE, path, **op)


def describe(summary: str, **op: Any) -> Callable[[Handler], Handler]:
    """Document a handler registered without :class:`Routes`; nothing is parsed or checked
    for it (the handler does its own)."""

    def mark(handler: Handler) -> Handler:
        setattr(handler, OPERATION_ATTR, Operation(summary, **op))
        return handler

    return mark


# --- the error middleware -----------------------------------------------------------------------
@web.middleware
async def error_middleware(request: web.Request, handler: Endpoint) -> web.StreamResponse:
    """Every error as a JSON body (aiohttp's own 404, 405 and 413 included; an unexpected
    exception is a logged 500), and every answer counted in the metrics."""
    upgrade = request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k in (hdrs.ALLOW, hdrs.RETRY_AFTER)}
        response = json_error(exc.status, _CODE_OF_STATUS.get(exc.status, f"HTTP_{exc.status}"),
                              exc.reason, headers=headers)
    except Exception:
        if upgrade:  # the WebSocket may be open already: no answer to replace; aiohttp logs it
            raise
        log.exception("http_handler_failed", method=request.method, path=request.path)
        response = json_error(500, ErrorCode.INTERNAL_ERROR, "internal error")
    route = request.match_info.route.resource
    request.app[NODE].metrics.http_request(
        request.method, route.canonical if route is not None else "unmatched", response.status)
    return response


# --- the document -----------------------------------------------------------------------------
_SCHEMES = {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
_SECURITY: dict[Access, list[dict[str, list[str]]]] = {
    "anyone": [], "user": [{"bearerAuth": []}, {"apiKey": []}], "bearer": [{"bearerAuth": []}],
    "admin": [{"bearerAuth": []}, {"apiKey": []}],
}
_AUTH_ERRORS: dict[Access, tuple[int, ...]] = {"anyone": (), "user": (401,), "bearer": (401,),
                                               "admin": (401, 403)}


@dataclass
class _Entry:
    path: str
    method: str
    name: str
    op: Operation
    access: Access
    refs: dict[str, Any] = field(default_factory=dict)


_STATIC = Operation("A file of this directory", content_type="application/octet-stream",
                    tags=("pages",))


def route_path(route: web.AbstractRoute) -> str | None:
    """The OpenAPI path of ``route`` (``/static/{filename}`` for a static directory)."""
    if route.resource is None:
        return None
    path = route.resource.canonical
    if isinstance(route.resource, web.StaticResource):
        return path.rstrip("/") + "/{filename}"
    return path


def _entries(app: web.Application) -> list[_Entry]:
    config = app[NODE].config
    found = []
    for route in app.router.routes():
        static = isinstance(route.resource, web.StaticResource)
        op = _STATIC if static else getattr(route.handler, OPERATION_ATTR, None)
        path = route_path(route)
        if route.method == hdrs.METH_HEAD or op is None or path is None:
            continue
        name = f"static_{path.strip('/').split('/')[0]}" if static else \
            getattr(route.handler, "__name__", "handler")
        found.append(_Entry(path, route.method.lower(), name, op, op.access_for(config)))
    return found


def _parameters(entry: _Entry) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": {"type": "string", "minLength": 1, "pattern": "^[^{}/]+$"}}
        for name in _PATH_PARAM.findall(entry.path)]
    query = entry.op.query
    if query is not None:
        schema = query.model_json_schema(ref_template=_REF)
        required = set(schema.get("required", ()))
        for name, prop in schema.get("properties", {}).items():
            param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                     "schema": _not_null(prop)}
            if prop.get("description"):
                param["description"] = prop["description"]
            params.append(param)
    return params


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: without its description, and ``X`` for ``X | None`` (a
    parameter is absent, never null)."""
    schema = {k: v for k, v in prop.items() if k != "description"}
    options = [o for o in schema.pop("anyOf", ()) if o.get("type") != "null"]
    if len(options) == 1:
        schema.update(options[0])
    elif options:
        schema["anyOf"] = options
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema


def _operation(entry: _Entry, refs: dict[tuple[type[BaseModel], str], Any]) -> dict[str, Any]:
    op = entry.op
    out: dict[str, Any] = {"operationId": entry.name, "summary": op.summary, "tags": list(op.tags)}
    if op.description:
        out["description"] = op.description
    params = _parameters(entry)
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {
            "required": bool(op.body.model_json_schema().get("required")),
            "content": {JSON: {"schema": refs[(op.body, "validation")]}}}
    success: dict[str, Any] = {"description": http.HTTPStatus(op.status).phrase}
    if op.response is not None:
        success["content"] = {op.content_type: {"schema": refs[(op.response, "serialization")]}}
    elif op.status != 101:
        success["content"] = {op.content_type: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {str(op.status): success}
    errors = set(op.errors) | set(_AUTH_ERRORS[entry.access])
    if op.query is not None or op.body is not None:
        errors.add(400)
    if op.body is not None:
        errors.add(413)
    for status in sorted(errors):
        responses[str(status)] = {"description": http.HTTPStatus(status).phrase,
                                  "content": {JSON: {"schema": refs[(ErrorBody, "serialization")]}}}
    if op is _STATIC:  # aiohttp's file response: an empty 404
        responses["404"] = {"description": http.HTTPStatus.NOT_FOUND.phrase}
    out["responses"] = responses
    security = _SECURITY[entry.access]
    if security:
        out["security"] = security
    return out


def document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every documented route of ``app``."""
    entries = _entries(app)
    wanted: dict[tuple[type[BaseModel], str], None] = {(ErrorBody, "serialization"): None}
    for entry in entries:
        if entry.op.body is not None:
            wanted[(entry.op.body, "validation")] = None
        if entry.op.response is not None:
            wanted[(entry.op.response, "serialization")] = None
    found, top = models_json_schema(list(wanted), ref_template=_REF)  # type: ignore[arg-type]
    refs = cast(dict[tuple[type[BaseModel], str], Any], found)
    paths: dict[str, dict[str, Any]] = {}
    for entry in sorted(entries, key=lambda e: (e.path, e.method)):
        paths.setdefault(entry.path, {})[entry.method] = _operation(entry, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Switchboard HTTP API", "version": __version__,
                 "description": "The HTTP API of a Switchboard server (docs/api.md)."},
        "paths": paths,
        "components": {"schemas": top.get("$defs", {}), "securitySchemes": _SCHEMES},
    }
