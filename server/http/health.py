"""Liveness and readiness: ``GET /healthz``, ``GET /readyz``."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from pydantic import BaseModel

from ..keys import NODE
from .errors import ApiError, HttpCode
from .routes import Routes

log = structlog.get_logger(__name__)
routes = Routes()

_READY_TIMEOUT = 2.0


class Health(BaseModel):
    status: str
    node: str


class Ready(Health):
    backend: str


@routes.get("/healthz", summary="Liveness: 200 while the process serves requests",
            response=Health, tags=("health",))
async def healthz(request: web.Request) -> Health:
    return Health(status="ok", node=request.app[NODE].node_id)


@routes.get("/readyz", summary="Readiness: the backend answers and the server is not draining",
            response=Ready, errors=(503,), tags=("health",))
async def readyz(request: web.Request) -> Ready:
    node = request.app[NODE]
    if node.hub.draining:
        raise ApiError(503, HttpCode.NOT_READY, "the server is shutting down")
    try:
        async with asyncio.timeout(_READY_TIMEOUT):
            reachable = await node.backend.ping()
    except Exception as exc:  # whatever the backend's client raises
        log.warning("backend_unreachable", error=str(exc) or type(exc).__name__)
        reachable = False
    if not reachable:
        node.metrics.backend_error("ping")
        raise ApiError(503, HttpCode.NOT_READY, "the backend does not answer")
    return Ready(status="ready", node=node.node_id, backend=node.config.backend.type)
