"""The documents and the metrics (``GET /api/protocol``, ``GET /api/openapi.json``,
``GET /metrics``) and the demo page's dev login (``POST /api/dev/token``)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from ..auth import mint_token
from ..config import Config
from ..errors import AuthError
from ..keys import NODE, REGISTRY
from ..protocol import ErrorCode
from .common import Name
from .errors import ApiError, not_found
from .openapi import document
from .routes import Access, Routes

log = structlog.get_logger(__name__)
routes = Routes()


# --- documents ------------------------------------------------------------------------------
class ErrorCodeEntry(BaseModel):
    code: str
    plugin: str = Field(description="core, or the plugin that declares it")
    description: str


class CloseCodeEntry(BaseModel):
    code: int
    name: str
    action: str = Field(description="what a client does: reconnect, token (get a new one, then "
                                    "reconnect) or stop")
    reconnect: bool
    meaning: str
    backoff: float = Field(description="first backoff step of the terminal client, seconds")


class CloseRange(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    from_: int = Field(alias="from")
    to: int
    action: str


class CloseCodes(BaseModel):
    codes: list[CloseCodeEntry]
    ranges: list[CloseRange] = Field(description="what a client does after a code not listed")
    default: str
    max_backoff: float


class ProtocolTypes(BaseModel):
    types: list[dict[str, Any]]
    error_codes: list[ErrorCodeEntry]
    close_codes: CloseCodes


class OpenApiDocument(BaseModel):
    model_config = ConfigDict(extra="allow")
    openapi: str
    paths: dict[str, Any]


@routes.get("/api/protocol", summary="Every registered message type (plugin, direction, JSON "
            "Schema of data), error code and close code", response=ProtocolTypes,
            tags=("documents",))
async def protocol(request: web.Request) -> web.Response:
    """Every registered message type with its plugin and the JSON Schema of its ``data``; the
    error codes of the core and of each plugin; the close codes with the reconnect rule."""
    return web.json_response(request.app[REGISTRY].catalogue())


@routes.get("/api/openapi.json", summary="This API as OpenAPI 3.1", response=OpenApiDocument,
            tags=("documents",))
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document(request.app))


# --- metrics --------------------------------------------------------------------------------
def _metrics_access(config: Config) -> Access:
    return "admin" if config.metrics.admin_only else "anyone"


@routes.get("/metrics", summary="Prometheus metrics (docs/operations.md)", access=_metrics_access,
            content_type="text/plain", errors=(404,), tags=("metrics",))
async def metrics(request: web.Request) -> web.Response:
    node = request.app[NODE]
    if not node.config.metrics.enabled:
        raise ApiError(404, ErrorCode.NOT_FOUND, "metrics are off (metrics.enabled: false)")
    return web.Response(body=node.metrics.exposition(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


# --- development ----------------------------------------------------------------------------
class DevTokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: Name = Field(description="also the user id (sub)")
    roles: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=16)


class PublicUser(BaseModel):
    id: str
    username: str


class DevToken(BaseModel):
    token: str
    user: PublicUser
    expires_at: int


DEV_TOKEN_TTL = 3600


@routes.post("/api/dev/token", summary="A token for anyone who asks, for the demo page (only "
             "with auth.dev_login: true; 404 otherwise)", body=DevTokenBody, response=DevToken,
             errors=(404, 409), tags=("development",))
async def dev_token(request: web.Request, body: DevTokenBody) -> DevToken:
    auth = request.app[NODE].config.auth
    if not auth.dev_login:
        raise not_found("this route (auth.dev_login is off)")
    expires_at = int(time.time()) + DEV_TOKEN_TTL  # the token's exp is this or a second later
    try:
        token = mint_token(auth, sub=body.username, username=body.username,
                           roles=body.roles or None, ttl=DEV_TOKEN_TTL)
    except AuthError as exc:
        raise ApiError(409, ErrorCode.UNAUTHORIZED, str(exc)) from None
    log.info("dev_token_issued", user_id=body.username, roles=body.roles)
    return DevToken(token=token, user=PublicUser(id=body.username, username=body.username),
                    expires_at=expires_at)
