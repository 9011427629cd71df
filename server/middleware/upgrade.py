"""Guards on the WebSocket upgrade (PROTOCOL §1), as one aiohttp middleware that runs before
the upgrade: IP allow/deny, origin, server capacity and draining, connect rate and connection
caps per IP, then the token (query or header) and the per-user cap. Each refusal is a JSON
error body with the status of the contract."""

from __future__ import annotations

import time
from typing import Awaitable, Callable

import structlog
from aiohttp import web

from ..config import Config
from ..errors import AuthError
from ..httputil import client_ip, ip_in, json_error, networks
from ..keys import CLAIMS, CLIENT_IP, SERVICES
from ..protocol import ErrorCode
from .ratelimit import TokenBucket

log = structlog.get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_token(request: web.BaseRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class UpgradeGuard:
    def __init__(self, config: Config) -> None:
        self.configure(config)
        self._connects: dict[str, TokenBucket] = {}

    def configure(self, config: Config) -> None:
        """(Re)build from config; called again on reload."""
        sec = config.security
        self.config = config
        self.path = config.server.ws_path
        self.trusted = networks(config.server.trusted_proxies)
        self.whitelist = networks(sec.ip_whitelist) if sec.ip_whitelist_enabled else None
        self.blacklist = networks(sec.ip_blacklist) if sec.ip_blacklist_enabled else None
        self.origins = {o.rstrip("/").lower() for o in sec.allowed_origins}

    def _origin_ok(self, origin: str | None) -> bool:
        if not self.config.security.check_origin:
            return True
        if origin is None:
            return False
        return "*" in self.origins or origin.rstrip("/").lower() in self.origins

    def _connect_allowed(self, ip: str) -> bool:
        rate = self.config.security.connect_rate_per_ip
        if not rate:
            return True
        now = time.monotonic()
        bucket = self._connects.get(ip)
        if bucket is None:
            if len(self._connects) > 10000:
                self._connects = {k: b for k, b in self._connects.items() if not b.full(now)}
            bucket = self._connects[ip] = TokenBucket(rate, rate)
        return bucket.take(now) == 0.0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != self.path:
            return await handler(request)
        services = request.app[SERVICES]
        sec = self.config.security
        ip = client_ip(request, self.trusted)
        request[CLIENT_IP] = ip
        refuse = log.bind(remote=ip).info
        if self.whitelist is not None and not ip_in(ip, self.whitelist):
            refuse("upgrade_refused", code=ErrorCode.IP_FORBIDDEN, reason="not whitelisted")
            return json_error(403, ErrorCode.IP_FORBIDDEN, "your address is not allowed")
        if self.blacklist is not None and ip_in(ip, self.blacklist):
            refuse("upgrade_refused", code=ErrorCode.IP_FORBIDDEN, reason="blacklisted")
            return json_error(403, ErrorCode.IP_FORBIDDEN, "your address is not allowed")
        if not self._origin_ok(request.headers.get("Origin")):
            refuse("upgrade_refused", code=ErrorCode.ORIGIN_FORBIDDEN, origin=request.headers.get("Origin"))
            return json_error(403, ErrorCode.ORIGIN_FORBIDDEN, "origin not allowed")
        hub = services.hub
        cap = self.config.server.max_connections
        if hub.draining:
            return json_error(503, ErrorCode.SERVER_BUSY, "the server is shutting down")
        if cap and len(hub.connections) >= cap:
            refuse("upgrade_refused", code=ErrorCode.SERVER_BUSY, reason="max_connections")
            return json_error(503, ErrorCode.SERVER_BUSY, "the server is at its connection limit")
        if not self._connect_allowed(ip):
            refuse("upgrade_refused", code=ErrorCode.TOO_MANY_CONNECTIONS, reason="connect rate")
            return json_error(429, ErrorCode.TOO_MANY_CONNECTIONS, "connecting too often; slow down")
        if sec.max_connections_per_ip and hub.count_ip(ip) >= sec.max_connections_per_ip:
            refuse("upgrade_refused", code=ErrorCode.TOO_MANY_CONNECTIONS, reason="per-ip cap")
            return json_error(429, ErrorCode.TOO_MANY_CONNECTIONS, "too many connections from your address")
        token = request.query.get("token") or bearer_token(request)
        if token:
            try:
                claims = await services.auth.verify(token)
            except AuthError as exc:
                refuse("upgrade_refused", code=ErrorCode.UNAUTHORIZED, reason=str(exc))
                return json_error(401, ErrorCode.UNAUTHORIZED, str(exc))
            user_id = str(claims["sub"])
            if sec.max_connections_per_user and hub.count_user(user_id) >= sec.max_connections_per_user:
                refuse("upgrade_refused", code=ErrorCode.TOO_MANY_CONNECTIONS, reason="per-user cap",
                       user_id=user_id)
                return json_error(429, ErrorCode.TOO_MANY_CONNECTIONS, "too many connections for this user")
            request[CLAIMS] = claims
        return await handler(request)
