"""Origin check against crafted origins (docs/security.md, "Tested attacks"): with
``security.check_origin`` and one allowed origin, every look-alike is refused with 403
``ORIGIN_FORBIDDEN`` before the upgrade, read from a real HTTP response; the allowed origin, in
another case or with a trailing dot on its host, upgrades to a real WebSocket."""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp.test_utils import TestClient

from tests.conftest import WS, make_token

MakeServer = Callable[..., Awaitable[TestClient]]
TIMEOUT = aiohttp.ClientTimeout(total=5)
ALLOWED = "https://app.example.com"
CONFIG = {"security": {"check_origin": True, "allowed_origins": [ALLOWED]}}

#: crafted origins, each of which must be refused; every one is distinct
CRAFTED: tuple[str, ...] = (
    "https://app.example.com.evil.com",        # the allowed host as a prefix of another host
    "https://evilapp.example.com",             # ... as a suffix of another label
    "https://evil.app.example.com",            # a subdomain (no wildcard is configured)
    "https://example.com",                     # the parent domain
    "null",                                    # sandboxed iframe, file:, data: pages
    "http://app.example.com",                  # http instead of https
    "wss://app.example.com",                   # another scheme
    "https://app.example.com:8443",            # another port
    "https://app.example.com:80",              # the other scheme's default port
    "https://app.example.com@evil.com",        # userinfo: the real host is evil.com
    "https://user:pass@app.example.com",       # credentials in front of the allowed host
    "https://app.example.com\\@evil.com",      # backslash userinfo parser confusion
    "https://\u0430pp.example.com",             # Cyrillic 'а' look-alike (IDNA: xn--pp-6kc)
    "https://xn--pp-6kc.example.com",          # the same look-alike, already punycode
    "https://app.example.com https://evil.com",  # a list of two origins (RFC 6454 form)
    "https://app.example.com, https://evil.com",  # a comma-joined list
    "",                                        # empty
    "   ",                                     # whitespace only
    "HTTP://APP.EXAMPLE.COM",                  # uppercase cannot turn http into https
    "https://app.example.com/path",            # a path appended
    "https://app.example.com?x=1",             # a query appended
    "https://app.example.com#frag",            # a fragment appended
    "//app.example.com",                       # scheme-relative, no scheme
    "app.example.com",                         # a bare host
    "https://app.example.com%2eevil.com",      # a percent-encoded dot
    "https://app.example.com..",               # two trailing dots: not a DNS name
)

#: the allowed origin written differently: same scheme, host and port, so it matches
SAME_ORIGIN = ("https://app.example.com", "https://APP.Example.COM", "HTTPS://app.example.com",
               "https://app.example.com:443", "https://app.example.com.")


def upgrade_headers(origin: str | None) -> dict[str, str]:
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    if origin is not None:
        headers["Origin"] = origin
    return headers


async def upgrade(client: TestClient, origin: str | None) -> tuple[int, Any]:
    """A GET with the upgrade headers and a valid token; the status and the JSON body (None on
    101, where the socket is closed at once)."""
    async with client.session.get(client.make_url("/ws"), params={"token": make_token("u1")},
                                  headers=upgrade_headers(origin), timeout=TIMEOUT) as resp:
        if resp.status == 101:
            return 101, None
        return resp.status, json.loads(await resp.text())


async def test_crafted_origins_are_all_refused_before_the_upgrade(make_server: MakeServer) -> None:
    assert len(set(CRAFTED)) == len(CRAFTED) >= 20
    client = await make_server(CONFIG)
    refused = []
    for origin in (*CRAFTED, None):  # None: no Origin header at all
        status, body = await upgrade(client, origin)
        if status == 403 and body["error"]["code"] == "ORIGIN_FORBIDDEN":
            refused.append(origin)
    admitted = [o for o in (*CRAFTED, None) if o not in refused]
    assert not admitted, f"{len(refused)}/{len(CRAFTED) + 1} refused; admitted: {admitted!r}"
    # the same client and config do admit the allowed origin: the refusals were the origin's
    status, _ = await upgrade(client, ALLOWED)
    assert status == 101


async def test_the_allowed_origin_upgrades_in_any_case_and_with_a_trailing_dot(
        make_server: MakeServer) -> None:
    client = await make_server(CONFIG)
    for origin in SAME_ORIGIN:
        raw = await client.ws_connect("/ws", params={"token": make_token("u1")}, origin=origin,
                                      timeout=aiohttp.ClientWSTimeout(ws_close=5))
        ws = WS(raw)
        connected = await ws.recv_type("connected")
        assert connected["data"]["user"]["id"] == "u1", origin
        await ws.close()
