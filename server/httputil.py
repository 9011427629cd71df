"""HTTP helpers shared by the upgrade guards and the HTTP API: JSON error bodies, client
addresses behind trusted proxies, CIDR matching, and ``Origin`` parsing."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping

from aiohttp import web
from yarl import URL

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: the client address when the forwarding chain names something that is not an address
UNKNOWN_IP = "unknown"


def json_error(status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None,
               **extra: object) -> web.Response:
    body: dict[str, object] = {"code": code, "message": message, **extra}
    return web.json_response({"error": body}, status=status, headers=headers)


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def parse_ip(text: str | None) -> Address | None:
    """An address as a peer or an ``X-Forwarded-For`` hop writes it: ``[v6]:port`` and
    ``v4:port`` are accepted, an IPv4-mapped IPv6 address becomes IPv4. None when it is not an
    address (``unknown``, a host name, empty)."""
    text = (text or "").strip()
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _within(addr: Address, nets: tuple[Network, ...]) -> bool:
    return any(addr.version == net.version and addr in net for net in nets)


def ip_in(ip: str, nets: tuple[Network, ...]) -> bool:
    addr = parse_ip(ip)
    return addr is not None and _within(addr, nets)


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
    if not _within(peer, trusted):
        return str(peer)
    hops = [h.strip() for line in request.headers.getall("X-Forwarded-For", [])
            for h in line.split(",") if h.strip()]
    for hop in reversed(hops):
        addr = parse_ip(hop)
        if addr is None:
            return UNKNOWN_IP
        if not _within(addr, trusted):
            return str(addr)
    first = parse_ip(hops[0]) if hops else None
    return str(first or peer)


@dataclass(frozen=True, slots=True)
class Origin:
    """An origin (scheme, host, port), or with ``wildcard`` a ``security.allowed_origins``
    pattern: ``https://*.example.com`` matches any subdomain at any depth (``a.example.com``,
    ``a.b.example.com``) but not ``example.com`` itself. A missing port is the scheme's default
    (``https://x`` and ``https://x:443`` are the same origin); scheme and port must match."""

    scheme: str
    host: str
    port: int | None
    wildcard: bool = False

    @classmethod
    def pattern(cls, entry: str) -> "Origin":
        """Raises ValueError naming the entry when it is not ``scheme://host[:port]``."""
        scheme, sep, rest = entry.partition("://")
        wildcard = bool(sep) and rest.startswith("*.")
        origin = parse_origin(f"{scheme}://{rest[2:]}" if wildcard else entry)
        if origin is None or "*" in origin.host:
            raise ValueError(f"not an origin (scheme://host[:port] or scheme://*.domain[:port]): "
                             f"{entry!r}")
        return cls(origin.scheme, origin.host, origin.port, wildcard)

    def allows(self, origin: "Origin") -> bool:
        if (origin.scheme, origin.port) != (self.scheme, self.port):
            return False
        if self.wildcard:
            return origin.host.endswith("." + self.host)
        return origin.host == self.host


def parse_origin(value: str) -> Origin | None:
    """An ``Origin`` header as (scheme, host, port), lowercased, IDNA-encoded and with the
    default port made explicit; None for ``null``, a path, credentials or anything else."""
    try:
        url = URL(value.strip())
    except ValueError:
        return None
    if not url.absolute or not url.raw_host or url.raw_user is not None or url.query_string \
            or url.raw_fragment or url.raw_path not in ("", "/"):
        return None
    return Origin(url.scheme.lower(), url.raw_host.lower().rstrip("."), url.port)
