"""Composition root: ``create_app(config) -> web.Application``. Wires; no logic of its own."""

from __future__ import annotations

from typing import Any, AsyncIterator, Mapping

import structlog
from aiohttp import web

from .config import DEV_SECRET, Config
from .http import api, conformance, pages
from .http.errors import error_middleware
from .http.guards import GUARD, UpgradeGuard
from .http.handshake import headers_read
from .http.sessions import HTTP_SESSIONS, HttpSessions
from .keys import NODE, PIPELINE, REGISTRY, WS_ROUTE
from .pipeline import build_pipeline
from .protocol import CloseCode
from .protocol.core_types import CORE_TYPES
from .registry import Registry
from .reload import RELOADER, Reloader
from .node import Node
from .ws import settle_writer_layout, websocket_handler

log = structlog.get_logger(__name__)


def create_app(config: Config, *, config_path: str | None = None,
               overrides: Mapping[str, Any] | None = None) -> web.Application:
    """Build the application. Plugin problems raise PluginError/ConfigError here, before any
    socket is opened. ``config_path`` and ``overrides`` (command-line flags) are what a reload
    reads again."""
    node = Node(config, config_path=config_path)
    registry = Registry.create(config, node)
    # the running config holds each plugin's validated section, however it was loaded
    node.config = config = registry.with_sections(config)
    node.plugins = registry.plugins
    node.metrics.track([*CORE_TYPES, *registry.handlers])
    node.metrics.watch(node.node_id, node.hub)
    guard = UpgradeGuard(config)
    # headers_read first: it stops the connection's server.handshake_timeout clock. Neither
    # stays in the WebSocket endpoint's way: it runs the guard and answers for itself (ws.py)
    app = web.Application(middlewares=[headers_read, error_middleware])
    app[NODE] = node
    app[GUARD] = guard
    app[REGISTRY] = registry
    app[PIPELINE] = build_pipeline(config, registry.stages)
    app[RELOADER] = Reloader(node, guard, app[PIPELINE], registry, overrides)
    node.control_ops["reload"] = app[RELOADER].on_control
    app[HTTP_SESSIONS] = HttpSessions()
    settle_writer_layout()
    app.router.add_get(config.server.ws_path, websocket_handler, name=WS_ROUTE)
    app.router.add_routes(api.routes)
    pages.setup(app)
    if config.server.conformance_echo:
        conformance.setup(app)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_drain)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    node = app[NODE]
    if node.config.auth.algorithm.startswith("HS") and node.config.auth.secret == DEV_SECRET:
        log.warning("insecure_dev_secret",
                    hint="auth.secret is the development default; set JWT_SECRET in production")
    await node.start()
    try:
        await app[REGISTRY].startup()
    except BaseException:
        await node.stop()
        raise
    log.info("server_started", node=node.node_id, backend=node.config.backend.type,
             plugins=[p.name for p in app[REGISTRY].plugins])
    yield
    await app[REGISTRY].shutdown()
    await node.stop()


async def _drain(app: web.Application) -> None:
    """Stop taking connections and close every open one with 1001."""
    node = app[NODE]
    node.hub.draining = True
    log.info("server_draining", connections=len(node.hub.connections))
    node.hub.close_all(CloseCode.GOING_AWAY, "server shutting down")
