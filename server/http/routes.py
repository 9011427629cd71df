"""HTTP routes declared once, with everything the OpenAPI 3.1 document needs (``openapi.py``
generates it from these declarations).

A route is declared with :class:`Routes`, which also parses and checks what the route takes
before the handler runs: the caller (401/403), the query and the JSON body (400 naming the field
at fault, 413 over ``api.max_body_size``). The handler returns a pydantic model (the response
body, documented by its class) or any ``web.StreamResponse``; it may raise :class:`ApiError` or
``MessageRejected`` (mapped to a status by ``errors.STATUS_OF``)::

    from server.http.routes import Caller, Routes

    routes = Routes()

    @routes.get("/api/things/{id}", summary="One thing", access="user", query=Page,
                response=Thing, errors=(404,))
    async def thing(request: web.Request, caller: Caller, query: Page) -> Thing:
        ...

    app.router.add_routes(routes)           # in app.py, like any aiohttp route table

A handler registered another way (``app.router.add_get``) is documented with
``openapi.describe``. A route with neither is missing from the document, and
tests/test_openapi.py fails.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator, Literal, Sequence, overload

import orjson
from aiohttp import hdrs, web
from pydantic import BaseModel, ValidationError

from ..auth import user_from_claims
from ..config import Config
from ..errors import AuthError, MessageRejected
from ..identity import User
from ..keys import NODE
from ..protocol import ErrorCode
from .errors import ApiError, Endpoint, HttpCode, invalid_request, rejected
from .guards import bearer_token

#: who may call: ``anyone``; ``user``: a valid bearer token or an API key; ``bearer``: a user's
#: own bearer token (the call acts as that user); ``admin``: a role in ``api.admin_roles`` or an
#: API key. A callable picks one of these from the running config.
Access = Literal["anyone", "user", "bearer", "admin"]
AccessRule = Access | Callable[[Config], Access]
JSON = "application/json"
#: the attribute of a handler that holds its :class:`Operation`
OPERATION_ATTR = "__switchboard_operation__"


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
