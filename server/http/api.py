"""The HTTP API of PROTOCOL §6 (docs/api.md): every route group's declarations in one route
table, in the order they are matched. Each group is a module of its own, declaring its routes
with :class:`server.http.routes.Routes`, which checks the caller, the query and the body before
the handler runs and documents the route from the same declaration (``openapi.py``)::

    app.router.add_routes(api.routes)       # in app.py
"""

from __future__ import annotations

from aiohttp import web

from . import health, messages, meta, operators, presence, rooms

#: every route of the HTTP API (the WebSocket upgrade and the demo page are registered apart)
routes: tuple[web.AbstractRouteDef, ...] = (
    *health.routes, *meta.routes, *presence.routes, *rooms.routes, *messages.routes,
    *operators.routes,
)
