"""HTTP helpers shared by the upgrade guards and the HTTP API."""

from __future__ import annotations

import ipaddress
from typing import Iterable

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def json_error(status: int, code: str, message: str, **extra: object) -> web.Response:
    body: dict[str, object] = {"code": code, "message": message, **extra}
    return web.json_response({"error": body}, status=status)


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def ip_in(ip: str, nets: tuple[Network, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in nets)


def client_ip(request: web.BaseRequest, trusted: tuple[Network, ...]) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the right-most
    ``X-Forwarded-For`` entry that is not itself a trusted proxy."""
    peer = request.remote or ""
    if not trusted or not ip_in(peer, trusted):
        return peer
    forwarded = request.headers.getall("X-Forwarded-For", [])
    hops = [h.strip() for line in forwarded for h in line.split(",") if h.strip()]
    for hop in reversed(hops):
        if not ip_in(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer
    return peer
