"""Addresses and origins as the guards and the config see them: CIDR networks, client
addresses as peers and proxies write them, and ``Origin`` patterns. A leaf module."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Iterable

from yarl import URL

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(_network(c) for c in cidrs)


def _network(cidr: str) -> Network:
    """An IPv4 network written IPv4-mapped (``::ffff:10.0.0.0/104``) is that IPv4 network, as
    a mapped client address is its IPv4 address: otherwise it could never match anything."""
    net = ipaddress.ip_network(cidr, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


@functools.lru_cache(maxsize=4096)  # the same peers again and again; ipaddress parses slowly
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


#: an address as text, normalised (``str`` of what :func:`parse_ip` gives), kept for the same
#: peers again and again
ip_text = functools.lru_cache(maxsize=4096)(str)


def within(addr: Address, nets: tuple[Network, ...]) -> bool:
    return any(addr.version == net.version and addr in net for net in nets)


def ip_in(ip: str, nets: tuple[Network, ...]) -> bool:
    addr = parse_ip(ip)
    return addr is not None and within(addr, nets)


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
    default port made explicit, one trailing dot on the host dropped (``app.example.com.`` is
    ``app.example.com``); None for ``null``, a path, credentials, an empty host label
    (``app.example.com..``) or anything else."""
    try:
        url = URL(value.strip())
    except ValueError:
        return None
    if not url.absolute or not url.raw_host or url.raw_user is not None or url.query_string \
            or url.raw_fragment or url.raw_path not in ("", "/"):
        return None
    host = url.raw_host.lower()
    host = host[:-1] if host.endswith(".") else host  # one trailing dot: the same DNS name
    if not host or "" in host.split("."):  # "a..b", "a.." and "." are not host names
        return None
    return Origin(url.scheme.lower(), host, url.port)
