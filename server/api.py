"""HTTP endpoints. This issue's slice: health and the protocol listing; the full API of
PROTOCOL §6 is built on the same routes table."""

from __future__ import annotations

from aiohttp import web

from .keys import REGISTRY, SERVICES

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness: 200 once the server accepts connections."""
    return web.json_response({"status": "ok", "node": request.app[SERVICES].node_id})


@routes.get("/api/protocol")
async def protocol(request: web.Request) -> web.Response:
    """Every registered message type with its plugin and the JSON Schema of its ``data``."""
    return web.json_response({"types": request.app[REGISTRY].describe()})
