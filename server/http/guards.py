"""Guards on the WebSocket upgrade (PROTOCOL §1), which the WebSocket endpoint runs first
(:meth:`UpgradeGuard.admit`), before the upgrade, in this order: IP whitelist, IP blacklist, origin, connect rate per IP, the token
(query or header), then draining, ``server.max_connections``, the per-IP and the per-user cap.
Each refusal is a JSON error body with the contract's status (docs/security.md).

The caps count leases, not the hub's connections. A lease is taken, in the same synchronous
step as the cap checks, when the guard admits an upgrade, and released when the handler
returns (connection closed, first-frame auth failed, handshake failed): upgrades in flight
count, so concurrent ones cannot slip past a cap before the hub knows them, and a socket still
waiting for its ``auth`` frame counts for its IP. Such a socket is counted for its user once the
frame is verified (``Lease.bind_user``; the handler closes it 1013 when the user is at the cap).
Counts are per node.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Any

import structlog
from aiohttp import web

from ..config import Config
from ..buckets import TokenBucket
from ..errors import AuthError
from ..addresses import Origin, ip_in, networks, parse_origin
from .util import client_ip, json_error
from ..keys import NODE
from ..protocol import ErrorCode

log = structlog.get_logger(__name__)

#: the client's address after trusted-proxy resolution, where it is not the peer's own
#: (``request.remote``): a request's state costs ~0.2 KiB once it holds anything, for as long
#: as a WebSocket lives
CLIENT_IP: web.RequestKey[str] = web.RequestKey("switchboard_client_ip", str)
#: the app's guard, which the WebSocket endpoint asks first
GUARD: web.AppKey["UpgradeGuard"] = web.AppKey("switchboard_upgrade_guard")

#: most client addresses whose connect rate is tracked at once
MAX_TRACKED_IPS = 65536


def bearer_token(request: web.BaseRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class ConnectRate:
    """A token bucket per client address: ``per_minute`` upgrade attempts a minute, in bursts
    of as many. Before a new address is tracked, the least recently seen ones whose bucket has
    refilled are forgotten (they would start full anyway), and beyond ``max_tracked`` the least
    recently seen one whatever its state: a hard bound, unlike ``BucketMap``, because addresses
    are chosen by whoever connects (an IPv6 /64 holds 2**64 of them)."""

    def __init__(self, per_minute: int, max_tracked: int = MAX_TRACKED_IPS) -> None:
        self.per_minute = per_minute
        self.max_tracked = max_tracked
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, ip: str, now: float) -> float:
        """Seconds until ``ip`` may try again; 0 when this attempt is allowed."""
        bucket = self._buckets.get(ip)
        if bucket is None:
            self._forget(now)
            bucket = self._buckets[ip] = TokenBucket(self.per_minute, self.per_minute)
        else:
            self._buckets.move_to_end(ip)
        return bucket.take(now)

    def _forget(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            oldest = buckets[next(iter(buckets))]
            if len(buckets) < self.max_tracked and not oldest.full(now):
                return
            buckets.popitem(last=False)


class Slots:
    """Leases held: upgrades admitted whose handler has not returned yet."""

    def __init__(self) -> None:
        self.total = 0
        self.by_ip: dict[str, int] = {}
        self.by_user: dict[str, int] = {}


def _count(counts: dict[str, int], key: str, delta: int) -> None:
    left = counts.get(key, 0) + delta
    if left:
        counts[key] = left
    else:
        counts.pop(key, None)


class Lease:
    """One admitted upgrade's place in the caps, counted for its IP at once and for its user
    once known; the guard releases it when the handler returns."""

    __slots__ = ("_slots", "_user_cap", "claims", "ip", "user_id")

    def __init__(self, slots: Slots, ip: str, user_cap: int) -> None:
        self._slots = slots
        self._user_cap = user_cap
        self.ip = ip
        self.user_id: str | None = None
        #: the verified claims of the upgrade's token (query or header), if it had one
        self.claims: dict[str, Any] | None = None
        slots.total += 1
        _count(slots.by_ip, ip, 1)

    def bind_user(self, user_id: str) -> bool:
        """Count this connection for ``user_id``; False, counting nothing, when the user holds
        ``security.max_connections_per_user`` connections already."""
        if self._user_cap and self._slots.by_user.get(user_id, 0) >= self._user_cap:
            return False
        _count(self._slots.by_user, user_id, 1)
        self.user_id = user_id
        return True

    def release(self) -> None:
        self._slots.total -= 1
        _count(self._slots.by_ip, self.ip, -1)
        if self.user_id is not None:
            _count(self._slots.by_user, self.user_id, -1)


def _refuse(ip: str, status: int, code: str, message: str, reason: str, *,
            retry_after: float | None = None, **fields: object) -> web.Response:
    log.info("upgrade_refused", remote=ip, status=status, code=code, reason=reason, **fields)
    if retry_after is None:
        return json_error(status, code, message)
    return json_error(status, code, message, retry_after=round(retry_after, 3),
                      headers={"Retry-After": str(math.ceil(retry_after))})


class UpgradeGuard:
    def __init__(self, config: Config) -> None:
        self.slots = Slots()
        self.connect_rate: ConnectRate | None = None
        self.configure(config)

    def configure(self, config: Config) -> None:
        """(Re)build from config; called again on reload. Leases carry over; the connect
        buckets start over only when ``connect_rate_per_ip`` changed."""
        sec = config.security
        self.config = config
        self.trusted = networks(config.server.trusted_proxies)
        self.whitelist = networks(sec.ip_whitelist) if sec.ip_whitelist_enabled else None
        self.blacklist = networks(sec.ip_blacklist) if sec.ip_blacklist_enabled else None
        self.any_origin = "*" in sec.allowed_origins
        self.origins = tuple(Origin.pattern(o) for o in sec.allowed_origins if o != "*")
        rate = sec.connect_rate_per_ip
        if rate != (self.connect_rate.per_minute if self.connect_rate else 0):
            self.connect_rate = ConnectRate(rate) if rate else None

    def _origin_allowed(self, header: str | None) -> bool:
        if self.any_origin:
            return True
        origin = parse_origin(header) if header else None
        return origin is not None and any(p.allows(origin) for p in self.origins)

    async def admit(self, request: web.Request) -> Lease | web.Response:
        """The upgrade's lease in the caps, or the refusal to answer with. The WebSocket
        endpoint calls this first and releases the lease when it returns (``ws.py``)."""
        ip = client_ip(request, self.trusted)
        if ip != request.remote:
            request[CLIENT_IP] = ip
        return await self._admit(request, ip)

    async def _admit(self, request: web.Request, ip: str) -> Lease | web.Response:
        sec = self.config.security
        node = request.app[NODE]
        if self.whitelist is not None and not ip_in(ip, self.whitelist):
            return _refuse(ip, 403, ErrorCode.IP_FORBIDDEN, "your address is not allowed",
                           "not_whitelisted")
        if self.blacklist is not None and ip_in(ip, self.blacklist):
            return _refuse(ip, 403, ErrorCode.IP_FORBIDDEN, "your address is not allowed",
                           "blacklisted")
        origin = request.headers.get("Origin")
        if sec.check_origin and not self._origin_allowed(origin):
            return _refuse(ip, 403, ErrorCode.ORIGIN_FORBIDDEN, "origin not allowed", "origin",
                           origin=origin)
        if self.connect_rate is not None:
            wait = self.connect_rate.take(ip, time.monotonic())
            if wait:
                return _refuse(ip, 429, ErrorCode.TOO_MANY_CONNECTIONS,
                               "connecting too often from your address; slow down",
                               "connect_rate", retry_after=wait)
        claims: dict[str, Any] | None = None
        token = request.query.get("token") or bearer_token(request)
        if token:
            try:
                claims = await node.auth.verify(token)
            except AuthError as exc:
                return _refuse(ip, 401, ErrorCode.UNAUTHORIZED, str(exc), "bad_token")
        # no await from here to the lease: the counts cannot move under the checks
        if node.hub.draining:
            return _refuse(ip, 503, ErrorCode.SERVER_BUSY, "the server is shutting down",
                           "draining")
        cap = self.config.server.max_connections
        if cap and self.slots.total >= cap:
            return _refuse(ip, 503, ErrorCode.SERVER_BUSY, "the server is at its connection limit",
                           "max_connections")
        per_ip = sec.max_connections_per_ip
        if per_ip and self.slots.by_ip.get(ip, 0) >= per_ip:
            return _refuse(ip, 429, ErrorCode.TOO_MANY_CONNECTIONS,
                           "too many connections from your address", "per_ip_cap")
        lease = Lease(self.slots, ip, sec.max_connections_per_user)
        lease.claims = claims
        user_id = str(claims["sub"]) if claims is not None else None
        if user_id is not None and not lease.bind_user(user_id):
            lease.release()
            return _refuse(ip, 429, ErrorCode.TOO_MANY_CONNECTIONS,
                           "too many connections for this user", "per_user_cap", user_id=user_id)
        return lease
