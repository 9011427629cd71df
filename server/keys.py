"""Typed application state keys (``web.AppKey``) and request keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .middleware.upgrade import Lease
    from .pipeline import Pipeline
    from .registry import Registry
    from .services import Services

SERVICES: web.AppKey["Services"] = web.AppKey("switchboard_services")
REGISTRY: web.AppKey["Registry"] = web.AppKey("switchboard_registry")
PIPELINE: web.AppKey["Pipeline"] = web.AppKey("switchboard_pipeline")

#: the verified JWT claims when the token came in the query or a header
CLAIMS: web.RequestKey[dict[str, Any]] = web.RequestKey("switchboard_claims", dict)
#: the client's address after trusted-proxy resolution
CLIENT_IP: web.RequestKey[str] = web.RequestKey("switchboard_client_ip", str)
#: the upgrade's slot in the connection caps, held until the handler returns
LEASE: web.RequestKey["Lease"] = web.RequestKey("switchboard_lease")
