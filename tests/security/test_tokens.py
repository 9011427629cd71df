"""Hostile and stale tokens (issue "Security and resilience", point 3): every way a token can be
wrong is refused both before the upgrade (HTTP 401 with the token in the query) and as a first
``auth`` frame (an ``UNAUTHORIZED`` error frame, then close 4500); a live socket closes 4001 at
its token's expiry and 4503 when its ``jti`` is revoked, also after a ``refresh`` brought a new
``jti``; and a token is never written to a log line or to ``/metrics``.

Real servers over real sockets; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import WSServerHandshakeError, web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from server.auth import MAX_TOKEN_BYTES
from server.keys import NODE
from tests.conftest import SECRET, WS, connector, make_token
from tests.test_auth import user_of
from tests.proc import start_server

API_KEY = "token-tests-key-0123456789abcdef"
OPS = {"X-API-Key": API_KEY}
OTHER_SECRET = "another-secret-0123456789abcdef-xyz"
WS_HEADERS = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()}


# --- helpers ---------------------------------------------------------------------------------
def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(sub: str = "u1", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + 3600, "username": f"user-{sub}"}
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


def hs256(body: dict[str, Any], secret: str | bytes = SECRET,
          headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(body, secret, algorithm="HS256", headers=headers)


def raw_token(header: dict[str, Any], body: dict[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand, for headers no JWT library would write."""
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(body).encode())}.{b64url(signature)}"


async def refused_401(client: TestClient, token: str) -> str:
    """``?token=`` is refused before the upgrade: a WebSocket client sees 401, and the same
    request as a plain GET gets the JSON error; returns its message."""
    with pytest.raises(WSServerHandshakeError) as info:
        await client.ws_connect("/ws", params={"token": token})
    assert info.value.status == 401
    async with client.get("/ws", params={"token": token}, headers=WS_HEADERS) as resp:
        assert resp.status == 401
        body = await resp.json()
    assert body["error"]["code"] == "UNAUTHORIZED"
    return str(body["error"]["message"])


async def refused_4500(client: TestClient, token: str) -> str:
    """The token as a first ``auth`` frame: an ``UNAUTHORIZED`` error frame answering it, then
    close 4500; returns the error's message."""
    ws = WS(await client.ws_connect("/ws"))
    await ws.send("auth", id="a1", data={"token": token})
    error = await ws.recv()
    assert error["type"] == "error" and error["reply_to"] == "a1", error
    assert error["data"]["code"] == "UNAUTHORIZED"
    assert await ws.closed() == 4500
    return str(error["data"]["message"])


async def refused_both(client: TestClient, token: str) -> str:
    """Refused both ways with the same reason; returns it."""
    open_before = len(client.server.app[NODE].hub.connections)
    reason = await refused_401(client, token)
    assert await refused_4500(client, token) == reason
    assert len(client.server.app[NODE].hub.connections) == open_before  # nothing got through
    return reason


def pem_public(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def rsa_config(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> dict[str, Any]:
    path = tmp_path / "rs256.pub.pem"
    path.write_bytes(pem_public(rsa_key))
    return {"auth": {"algorithm": "RS256", "public_key_file": str(path)}}


@pytest.fixture
async def client(make_server: Any) -> TestClient:
    return await make_server({"api": {"keys": [API_KEY]}})


async def revoke(client: TestClient, jti: str) -> dict[str, Any]:
    async with client.post("/api/tokens/revoke", json={"jti": jti, "exp": time.time() + 3600},
                           headers=OPS) as resp:
        assert resp.status == 200
        return dict(await resp.json())


# --- refused at the upgrade (401) and as a first frame (4500) --------------------------------
@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_unsigned_token_refused(client: TestClient, alg: str) -> None:
    unsigned = raw_token({"alg": alg, "typ": "JWT"}, claims())
    assert await refused_both(client, unsigned) == "token not signed with HS256"
    # the library's own "none" token too (it has an empty signature as well)
    if alg == "none":
        assert await refused_both(client, jwt.encode(claims(), "", algorithm="none")) \
            == "token not signed with HS256"


async def test_hs256_signed_with_the_rs256_public_key_refused(make_server: Any, rsa_config: dict[str, Any],
                                                              rsa_key: rsa.RSAPrivateKey) -> None:
    """Algorithm confusion: the public key (which anyone may have) used as the HMAC secret."""
    client = await make_server(rsa_config)
    public_pem = Path(rsa_config["auth"]["public_key_file"]).read_bytes()
    header, body = b64url(b'{"alg":"HS256","typ":"JWT"}'), b64url(json.dumps(claims()).encode())
    mac = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{body}.{b64url(mac)}"
    assert await refused_both(client, forged) == "token not signed with RS256"
    # the server does accept the real thing, so the refusal is about the forgery
    good = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert user_of(await connector(client)(token=good)) == "u1"


async def test_wrong_key_refused(make_server: Any, client: TestClient, rsa_config: dict[str, Any]) -> None:
    assert "signature verification failed" in \
        (await refused_both(client, hs256(claims(), OTHER_SECRET))).lower()
    rs_client = await make_server(rsa_config)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert "signature verification failed" in \
        (await refused_both(rs_client, jwt.encode(claims(), other, algorithm="RS256"))).lower()


async def test_missing_exp_refused_by_default(client: TestClient) -> None:
    assert await refused_both(client, hs256(claims(exp=None))) == "missing claim 'exp'"


async def test_expired_beyond_the_leeway_refused(make_server: Any) -> None:
    client = await make_server({"auth": {"leeway": 10}})
    assert await refused_both(client, hs256(claims(exp=int(time.time()) - 30))) == "token expired"
    # within the leeway it is admitted: the refusal above is the leeway running out
    assert user_of(await connector(client)(token=hs256(claims(exp=int(time.time()) - 3)))) == "u1"


async def test_nbf_in_the_future_refused(client: TestClient) -> None:
    message = await refused_both(client, hs256(claims(nbf=int(time.time()) + 600)))
    assert message.startswith("invalid token") and "nbf" in message


@pytest.mark.parametrize(("aud", "iss", "reason"), [
    ("someone-else", "https://issuer", "wrong audience"),
    ("switchboard", "https://elsewhere", "wrong issuer"),
    (None, "https://issuer", "missing claim 'aud'"),
    ("switchboard", None, "missing claim 'iss'"),
])
async def test_wrong_audience_or_issuer_refused(make_server: Any, aud: str | None, iss: str | None,
                                                reason: str) -> None:
    client = await make_server({"auth": {"audience": "switchboard", "issuer": "https://issuer"}})
    assert await refused_both(client, hs256(claims(aud=aud, iss=iss))) == reason
    good = hs256(claims(aud="switchboard", iss="https://issuer"))
    assert user_of(await connector(client)(token=good)) == "u1"


async def test_unknown_crit_extension_refused(client: TestClient) -> None:
    """RFC 7515 §4.1.11: a critical header extension the server does not understand makes the
    token invalid, even with a good signature."""
    token = hs256(claims(), headers={"crit": ["x-unknown-ext"], "x-unknown-ext": True})
    message = await refused_both(client, token)
    assert message.startswith("invalid token") and "x-unknown-ext" in message


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


async def test_unknown_kid_refused_with_a_jwks(aiohttp_server: Any, make_server: Any,
                                               rsa_key: rsa.RSAPrivateKey) -> None:
    """Keys are picked by ``kid`` only from a JWKS (a local key server on a free port here): a
    ``kid`` the set does not have is refused, even when signed with the set's one key."""
    async def keys(request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk(rsa_key, "k1")]})

    app = web.Application()
    app.router.add_get("/jwks", keys)
    url = str((await aiohttp_server(app)).make_url("/jwks"))
    client = await make_server({"auth": {"algorithm": "RS256", "jwks_url": url}})
    unknown = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k9"})
    assert await refused_both(client, unknown) == "no RS256 key with kid 'k9' in the JWKS"
    known = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    assert user_of(await connector(client)(token=known)) == "u1"


async def test_kid_is_not_used_with_a_key_file(make_server: Any, rsa_config: dict[str, Any],
                                               rsa_key: rsa.RSAPrivateKey) -> None:
    """With ``auth.public_key_file`` there is one key and no key selection: ``kid`` is ignored,
    so a token signed by that key verifies whatever its ``kid``, and one signed by another key
    is refused whatever its ``kid`` (docs/authentication.md)."""
    client = await make_server(rsa_config)
    mine = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "no-such-kid"})
    assert user_of(await connector(client)(token=mine)) == "u1"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    theirs = jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "no-such-kid"})
    assert "signature verification failed" in (await refused_both(client, theirs)).lower()


def oversized() -> str:
    token = hs256(claims(padding="x" * MAX_TOKEN_BYTES))
    assert len(token) > MAX_TOKEN_BYTES
    return token


async def test_token_over_8_kib_refused(client: TestClient) -> None:
    """A validly signed token over 8 KiB: in the query it makes the request line longer than
    aiohttp's limit (8190 bytes), so the HTTP parser refuses the request with 400 before the
    application (and the token check) sees it; in a first frame it is refused by its length,
    before any parsing, with 4500."""
    token = oversized()
    with pytest.raises(WSServerHandshakeError) as info:
        await client.ws_connect("/ws", params={"token": token})
    assert info.value.status == 400
    assert await refused_4500(client, token) == f"token longer than {MAX_TOKEN_BYTES} bytes"
    # the same claims in a token within the limit are fine: the refusal is the size
    fits = hs256(claims(padding="x" * (MAX_TOKEN_BYTES // 2)))
    ws = WS(await client.ws_connect("/ws"))
    await ws.send("auth", data={"token": fits})
    assert (await ws.recv())["type"] == "connected"


@pytest.mark.parametrize("mangle", [
    pytest.param(lambda h, p, s: f"{h[:5]}!!{h[5:]}.{p}.{s}", id="bad-char-in-header"),
    pytest.param(lambda h, p, s: f"{h}.{p[:-1]}*.{s}", id="bad-char-in-payload"),
    pytest.param(lambda h, p, s: f"{h}.{p}.{s}%%", id="bad-char-in-signature"),
    pytest.param(lambda h, p, s: f"{h}=.{p}.{s}", id="padding-in-the-middle"),
    pytest.param(lambda h, p, s: f"{h}.{p}", id="two-segments"),
    pytest.param(lambda h, p, s: f"{b64url(b'not json')}.{p}.{s}", id="header-not-json"),
    pytest.param(lambda h, p, s: f"{h}.{b64url(b'[1, 2]')}.{s}", id="payload-not-an-object"),
])
async def test_malformed_base64_or_structure_refused(client: TestClient, mangle: Any) -> None:
    header, payload, signature = hs256(claims()).split(".")
    message = await refused_both(client, mangle(header, payload, signature))
    assert message.startswith("invalid token"), message


# --- while connected ------------------------------------------------------------------------
async def test_live_socket_closes_4001_after_exp_plus_leeway(make_server: Any) -> None:
    leeway = 1
    client = await make_server({"auth": {"leeway": leeway}})
    exp = math.ceil(time.time() + 2)
    ws = await connector(client)(token=hs256(claims(exp=exp)))
    assert ws.connected is not None and ws.connected["data"]["expires_at"] == exp
    assert await ws.closed(timeout=exp + leeway + 5 - time.time()) == 4001
    assert exp + leeway - 0.1 <= time.time() <= exp + leeway + 5


async def test_revoked_jti_closes_its_sockets_4503_within_2_s(client: TestClient) -> None:
    connect = connector(client)
    token = make_token("u1", jti="stolen")
    victims = [await connect(token=token), await connect(token=token)]
    bystander = await connect("u1", jti="fine")
    assert await revoke(client, "stolen") == {"jti": "stolen", "closed": 2}
    for ws in victims:
        assert await ws.closed(timeout=2) == 4503
    assert (await bystander.request("ping"))["type"] == "pong"
    assert await refused_both(client, token) == "token revoked"


# --- refresh and revoke (the bug: revocation missed the token a connection refreshed to) ------
async def test_revoking_the_refreshed_to_jti_closes_the_connection(client: TestClient) -> None:
    ws = await connector(client)(token=make_token("u1", jti="j-first", username="alice"))
    reply = await ws.request("refresh", data={"token": make_token("u1", jti="j-second")})
    assert reply["type"] == "refreshed"
    conn = next(iter(client.server.app[NODE].hub.connections.values()))
    assert await revoke(client, "j-second") == {"jti": "j-second", "closed": 1}
    assert await ws.closed(timeout=2) == 4503
    # the identity stays the one the connection was made with; the claims are the new token's
    assert (conn.user.id, conn.user.username, conn.user.claims["jti"]) == ("u1", "alice", "j-second")


async def test_revoking_a_token_the_connection_refreshed_away_from_closes_nothing(
        client: TestClient) -> None:
    """Revocation reaches the token a connection holds now; the one it replaced is refused for
    new connections but no longer keeps anyone connected."""
    ws = await connector(client)(token=make_token("u1", jti="j-old"))
    assert (await ws.request("refresh", data={"token": make_token("u1", jti="j-new")}))["type"] == "refreshed"
    assert await revoke(client, "j-old") == {"jti": "j-old", "closed": 0}
    assert (await ws.request("ping"))["type"] == "pong"
    assert await refused_401(client, make_token("u1", jti="j-old")) == "token revoked"


async def test_refresh_with_a_revoked_token_is_refused_and_changes_nothing(client: TestClient) -> None:
    ws = await connector(client)(token=make_token("u1", jti="j-held"))
    assert await revoke(client, "j-burnt") == {"jti": "j-burnt", "closed": 0}
    reply = await ws.request("refresh", data={"token": make_token("u1", jti="j-burnt", ttl=7200)})
    assert reply["type"] == "error" and reply["data"]["code"] == "UNAUTHORIZED"
    assert reply["data"]["message"] == "refresh refused: token revoked"
    assert (await ws.request("ping"))["type"] == "pong"
    # the connection still holds its first token: revoking that one closes it
    assert await revoke(client, "j-held") == {"jti": "j-held", "closed": 1}
    assert await ws.closed(timeout=2) == 4503


# --- the canary: a token never reaches a log line or /metrics ---------------------------------
CANARY_CONFIG = """\
logging:
  level: debug
  format: json
rate_limit:
  messages_per_minute: 1
  burst: 3
security:
  max_connections_per_user: 2
"""


async def test_a_token_never_reaches_the_logs_or_metrics(tmp_path: Path) -> None:
    canary = make_token("canary-user", jti="canary-jti", ttl=600)
    pieces = canary.split(".")
    server = await start_server(tmp_path, CANARY_CONFIG, env={"WS_API_KEYS": API_KEY})
    metrics = ""
    sockets: list[WS] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            url = server.url
            # success: the query, then the header
            by_query = WS(await session.ws_connect(f"{url}/ws", params={"token": canary}))
            assert (await by_query.recv())["type"] == "connected"
            by_header = WS(await session.ws_connect(f"{url}/ws",
                                                    headers={"Authorization": f"Bearer {canary}"}))
            assert (await by_header.recv())["type"] == "connected"
            # refresh with it until the rate limit refuses the frame
            codes = []
            for _ in range(4):
                reply = await by_query.request("refresh", data={"token": canary})
                codes.append(reply["type"] if reply["type"] != "error" else reply["data"]["code"])
            assert codes == ["refreshed"] * 3 + ["RATE_LIMITED"]
            # refusals: the per-user cap, before the upgrade and after a first frame
            with pytest.raises(WSServerHandshakeError) as capped:
                await session.ws_connect(f"{url}/ws", params={"token": canary})
            assert capped.value.status == 429
            first = WS(await session.ws_connect(f"{url}/ws"))
            await first.send("auth", data={"token": canary})
            assert await first.closed() == 1013
            # another user refreshing with it; an admin route with it as a user token
            other = WS(await session.ws_connect(f"{url}/ws", params={"token": make_token("u2")}))
            assert (await other.recv())["type"] == "connected"
            forbidden = await other.request("refresh", data={"token": canary})
            assert forbidden["data"]["code"] == "FORBIDDEN"
            async with session.get(f"{url}/api/stats", headers={"Authorization": f"Bearer {canary}"}) as resp:
                assert resp.status == 403
            async with session.get(f"{url}/metrics") as resp:
                assert resp.status == 200
                metrics = await resp.text()
            # shutdown with the canary's sockets open
            sockets += [by_query, by_header, first, other]
            # reading while the server drains, as a live client does: each answers the 1001
            closing = [asyncio.create_task(ws.closed()) for ws in (by_query, by_header, other)]
            assert await server.stop(signal.SIGTERM) == 0
            assert await asyncio.gather(*closing) == [1001, 1001, 1001]
    finally:
        for ws in sockets:
            await ws.ws.close()
        await server.kill()
    events = server.events()
    seen = {e["event"] for e in events}
    # the paths above really ran and were logged (at debug level, in JSON)
    assert {"token_refreshed", "frame_rejected", "server_draining"} <= seen, sorted(seen)
    assert any(e.get("code") == "RATE_LIMITED" for e in events)
    assert any(e.get("user_id") == "canary-user" for e in events)
    assert "# HELP" in metrics  # a real exposition was read
    for text in ("\n".join(server.lines), metrics):
        assert canary not in text
        for piece in pieces:  # nor any part of it: header, claims or signature
            assert piece not in text
