"""HTTP helpers shared by the upgrade guards and the HTTP API: JSON error bodies and the
client address behind trusted proxies (``server/addresses.py`` has the parsing)."""

from __future__ import annotations

from typing import Mapping

from aiohttp import web

from ..addresses import Network, ip_text, within, parse_ip

#: the client address when the forwarding chain names something that is not an address
UNKNOWN_IP = "unknown"


def json_error(status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None,
               **extra: object) -> web.Response:
    body: dict[str, object] = {"code": code, "message": message, **extra}
    return web.json_response({"error": body}, status=status, headers=headers)


def client_ip(request: web.BaseRequest, trusted: tuple[Network, ...]) -> str:
    """The client's address, normalised (``::ffff:1.2.3.4`` is ``1.2.3.4``).

    The peer, unless the peer is in ``trusted``: then ``X-Forwarded-For`` (every header line,
    in order) is read from the right, each trusted proxy skipped, and the first hop that is not
    a trusted proxy is the client, since hops to its left were written by the client and
    cannot be believed. When every hop is trusted the left-most one is the client. A hop that
    is not an address gives ``unknown``: it matches no CIDR, so a whitelist refuses it, all
    such clients share one per-IP count, and it is never mistaken for the proxy's address.
    """
    peer = parse_ip(request.remote)
    if peer is None:
        return request.remote or ""
    if not within(peer, trusted):
        return ip_text(peer)
    hops = [h.strip() for line in request.headers.getall("X-Forwarded-For", [])
            for h in line.split(",") if h.strip()]
    for hop in reversed(hops):
        addr = parse_ip(hop)
        if addr is None:
            return UNKNOWN_IP
        if not within(addr, trusted):
            return str(addr)
    first = parse_ip(hops[0]) if hops else None
    return str(first or peer)
