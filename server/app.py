"""Composition root: ``create_app(config) -> web.Application``. Wires; no logic of its own."""

from __future__ import annotations

from typing import Any, AsyncIterator, Mapping

import structlog
from aiohttp import web

from . import api, pages
from .config import DEV_SECRET, Config
from .keys import PIPELINE, REGISTRY, SERVICES
from .middleware.upgrade import UpgradeGuard
from .openapi import error_middleware
from .pipeline import build_pipeline
from .protocol import CloseCode
from .registry import CORE_TYPES, Registry
from .reload import RELOADER, Reloader
from .services import Services
from .ws import websocket_handler

log = structlog.get_logger(__name__)


def create_app(config: Config, *, config_path: str | None = None,
               overrides: Mapping[str, Any] | None = None) -> web.Application:
    """Build the application. Plugin problems raise PluginError/ConfigError here, before any
    socket is opened. ``config_path`` and ``overrides`` (command-line flags) are what a reload
    reads again."""
    services = Services(config, config_path=config_path)
    registry = Registry.create(config, services)
    services.registry = registry
    services.metrics.track([*CORE_TYPES, *registry.handlers])
    services.metrics.watch(services)
    guard = UpgradeGuard(config)
    app = web.Application(middlewares=[error_middleware, guard.middleware])
    app[SERVICES] = services
    app[REGISTRY] = registry
    app[PIPELINE] = build_pipeline(config, registry.stages)
    app[RELOADER] = Reloader(services, guard, app[PIPELINE], registry, overrides)
    app[api.HTTP_SESSIONS] = api.HttpSessions()
    app.router.add_get(config.server.ws_path, websocket_handler)
    app.router.add_routes(api.routes)
    pages.setup(app)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_drain)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    if services.config.auth.algorithm.startswith("HS") and services.config.auth.secret == DEV_SECRET:
        log.warning("insecure_dev_secret",
                    hint="auth.secret is the development default; set JWT_SECRET in production")
    await services.start()
    try:
        await app[REGISTRY].startup()
    except BaseException:
        await services.stop()
        raise
    log.info("server_started", node=services.node_id, backend=services.config.backend.type,
             plugins=[p.name for p in app[REGISTRY].plugins])
    yield
    await app[REGISTRY].shutdown()
    await services.stop()


async def _drain(app: web.Application) -> None:
    """Stop taking connections and close every open one with 1001."""
    services = app[SERVICES]
    services.hub.draining = True
    log.info("server_draining", connections=len(services.hub.connections))
    services.hub.close_all(CloseCode.GOING_AWAY, "server shutting down")
