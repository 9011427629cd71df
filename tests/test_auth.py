"""Authentication (PROTOCOL §1): the three ways to pass a token, the checks on it (signature,
algorithm, exp, aud, iss, leeway, revocation, claim types), RS256/ES256 with a key file or a
JWKS URL, and expiry while connected with ``refresh``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import WSServerHandshakeError, web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from server.app import create_app
from server.errors import AuthError
from server.keys import NODE
from tests.conftest import SECRET, WS, Connect, connector, make_config, make_token

WS_HEADERS = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()}


# --- helpers ---------------------------------------------------------------------------------
async def assert_refused(client: TestClient, *, token: str, via: str = "query") -> str:
    """The upgrade with ``token`` is refused 401 UNAUTHORIZED, seen by a WebSocket client and in
    the JSON body of the same request made as a plain GET; returns the body's message."""
    params, headers = ({"token": token}, {}) if via == "query" else ({}, {"Authorization": f"Bearer {token}"})
    with pytest.raises(WSServerHandshakeError) as info:
        await client.ws_connect("/ws", params=params, headers=headers)
    assert info.value.status == 401
    resp = await client.get("/ws", params=params, headers={**WS_HEADERS, **headers})
    assert resp.status == 401
    body = await resp.json()
    assert body["error"]["code"] == "UNAUTHORIZED"
    return str(body["error"]["message"])


async def first_frame_client(client: TestClient) -> WS:
    return WS(await client.ws_connect("/ws"))


def soon() -> int:
    """An ``exp`` in whole seconds, 1 to 2 s ahead."""
    return math.ceil(time.time() + 1.0)


def user_of(ws: WS) -> Any:
    """Whom the server admitted: the user its ``connected`` frame names (``connect`` returns
    only once that frame came, so this is the check that the token was accepted as itself)."""
    return (ws.connected or {})["data"]["user"]["id"]


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(sub: str = "u1", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + 3600, "username": f"user-{sub}", **extra}


def pem_public(key: Any) -> bytes:
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


# --- the three ways --------------------------------------------------------------------------
async def test_token_in_query(connect: Connect) -> None:
    ws = await connect("u1", username="alice", roles=["admin"])
    assert ws.connected is not None
    data = ws.connected["data"]
    assert data["user"] == {"id": "u1", "username": "alice"}
    assert isinstance(data["expires_at"], int) and data["expires_at"] > time.time()


async def test_token_in_authorization_header(client: TestClient) -> None:
    ws = WS(await client.ws_connect("/ws", headers={"Authorization": f"Bearer {make_token('u2')}"}))
    connected = await ws.recv_type("connected")
    assert connected["data"]["user"]["id"] == "u2"


async def test_token_in_first_frame_with_reply_to(client: TestClient) -> None:
    ws = await first_frame_client(client)
    await ws.send("auth", id="a1", data={"token": make_token("u3", username="carol")})
    connected = await ws.recv()
    assert connected["type"] == "connected" and connected["reply_to"] == "a1"
    assert connected["data"]["user"] == {"id": "u3", "username": "carol"}
    assert (await ws.request("ping"))["type"] == "pong"


async def test_first_frame_without_id_connects(client: TestClient) -> None:
    ws = await first_frame_client(client)
    await ws.send("auth", data={"token": make_token("u3")})
    connected = await ws.recv()
    assert connected["type"] == "connected" and "reply_to" not in connected


async def test_no_first_frame_in_time_closes_4500(make_server: Any) -> None:
    client = await make_server({"auth": {"first_message_timeout": 0.3}})
    ws = await first_frame_client(client)
    started = time.monotonic()
    assert await ws.closed(timeout=5) == 4500
    assert time.monotonic() - started >= 0.15  # it waited (the server's clock started first)


async def test_pings_do_not_count_as_the_first_frame(make_server: Any) -> None:
    client = await make_server({"auth": {"first_message_timeout": 2}})
    ws = await first_frame_client(client)
    await ws.ws.ping(b"hi")
    await ws.send("auth", id="a", data={"token": make_token("u1")})
    assert (await ws.recv_type("connected"))["reply_to"] == "a"


async def test_bad_first_frame_token_gets_error_then_4500(client: TestClient) -> None:
    ws = await first_frame_client(client)
    await ws.send("auth", id="a2", data={"token": make_token("u1", secret="another-secret-0123456789abcdef-xyz")})
    error = await ws.recv()
    assert error["type"] == "error" and error["reply_to"] == "a2"
    assert error["data"]["code"] == "UNAUTHORIZED"
    assert await ws.closed() == 4500


@pytest.mark.parametrize("first", [
    json.dumps({"type": "ping", "id": "p"}),
    json.dumps({"type": "auth", "data": {}}),
    "not json",
])
async def test_other_first_frame_closes_4500(client: TestClient, first: str) -> None:
    ws = await first_frame_client(client)
    await ws.send_raw(first)
    assert (await ws.recv())["data"]["code"] == "UNAUTHORIZED"
    assert await ws.closed() == 4500


# --- refused before the upgrade --------------------------------------------------------------
@pytest.mark.parametrize("via", ["query", "header"])
async def test_invalid_signature_refused_401(client: TestClient, via: str) -> None:
    bad = make_token("u1", secret="another-secret-0123456789abcdef-xyz")
    assert "signature" in (await assert_refused(client, token=bad, via=via)).lower()


@pytest.mark.parametrize("via", ["query", "header"])
async def test_expired_token_refused_401(client: TestClient, via: str) -> None:
    assert await assert_refused(client, token=make_token("u1", ttl=-10), via=via) == "token expired"


async def test_garbage_token_refused_401(client: TestClient) -> None:
    assert "invalid token" in await assert_refused(client, token="not.a.jwt")


@pytest.mark.parametrize(("extra", "reason"), [
    ({"aud": "other", "iss": "https://issuer"}, "wrong audience"),
    ({"iss": "https://issuer"}, "missing claim 'aud'"),
    ({"aud": "switchboard", "iss": "https://elsewhere"}, "wrong issuer"),
    ({"aud": "switchboard"}, "missing claim 'iss'"),
])
async def test_audience_and_issuer_checked(make_server: Any, extra: dict[str, str], reason: str) -> None:
    client = await make_server({"auth": {"audience": "switchboard", "issuer": "https://issuer"}})
    for via in ("query", "header"):
        assert await assert_refused(client, token=make_token("u1", **extra), via=via) == reason
    good = make_token("u1", aud="switchboard", iss="https://issuer")
    assert user_of(await connector(client)(token=good)) == "u1"


async def test_leeway_accepts_a_token_expired_a_moment_ago(make_server: Any) -> None:
    stale = make_token("u1", exp=int(time.time()) - 3)
    strict = await make_server()
    assert await assert_refused(strict, token=stale) == "token expired"
    lenient = await make_server({"auth": {"leeway": 30}})
    ws = await connector(lenient)(token=stale)
    # admitted by the leeway, so not closed as expired at once either
    assert (await ws.request("ping"))["type"] == "pong"


async def test_exp_required_unless_configured(make_server: Any) -> None:
    forever = jwt.encode({"sub": "u1", "username": "alice"}, SECRET, algorithm="HS256")
    assert await assert_refused(await make_server(), token=forever) == "missing claim 'exp'"
    client = await make_server({"auth": {"require_exp": False}})
    ws = await connector(client)(token=forever)
    assert ws.connected is not None and ws.connected["data"]["expires_at"] is None


async def test_revoked_jti_from_config_refused(make_server: Any) -> None:
    client = await make_server({"auth": {"revoked_jtis": ["stolen"]}})
    assert await assert_refused(client, token=make_token("u1", jti="stolen")) == "token revoked"
    assert user_of(await connector(client)(token=make_token("u1", jti="fine"))) == "u1"


async def test_revoked_jti_at_run_time_refused(client: TestClient, connect: Connect) -> None:
    token = make_token("u1", jti="j-runtime")
    assert user_of(await connect(token=token)) == "u1"
    client.server.app[NODE].auth.revocations.revoke("j-runtime", time.time() + 3600)
    assert await assert_refused(client, token=token) == "token revoked"
    ws = await first_frame_client(client)
    await ws.send("auth", data={"token": token})
    assert (await ws.recv())["data"]["message"] == "token revoked"
    assert await ws.closed() == 4500
    assert user_of(await connect(token=make_token("u1", jti="j-other"))) == "u1"


async def test_alg_none_refused(client: TestClient) -> None:
    unsigned = jwt.encode(claims(), None, algorithm="none")
    assert "not signed with HS256" in await assert_refused(client, token=unsigned)


@pytest.mark.parametrize(("claim", "value"), [("roles", 5), ("roles", ["a", 1]), ("username", {"x": 1}),
                                              ("sub", ""), ("email", 3)])
async def test_claims_of_the_wrong_type_refused(client: TestClient, claim: str, value: Any) -> None:
    token = jwt.encode(claims(**{claim: value}), SECRET, algorithm="HS256")
    assert claim in await assert_refused(client, token=token)


async def test_roles_claim_may_be_one_string(client: TestClient) -> None:
    token = jwt.encode(claims(roles="admin"), SECRET, algorithm="HS256")
    ws = await connector(client)(token=token)
    conn = next(iter(client.server.app[NODE].hub.connections.values()))
    assert ws.connected is not None and conn.user.roles == ("admin",)


# --- RS256 / ES256 ---------------------------------------------------------------------------
async def test_rs256_with_key_file(make_server: Any, rsa_config: dict[str, Any],
                                   rsa_key: rsa.RSAPrivateKey) -> None:
    client = await make_server(rsa_config)
    token = jwt.encode(claims("u1"), rsa_key, algorithm="RS256")
    assert user_of(await connector(client)(token=token)) == "u1"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert "signature" in (await assert_refused(client, token=jwt.encode(claims(), other, algorithm="RS256"))).lower()


async def test_hs256_signed_with_the_public_key_refused(make_server: Any, rsa_config: dict[str, Any],
                                                         rsa_key: rsa.RSAPrivateKey) -> None:
    """Algorithm confusion: the public key (which anyone may have) used as an HMAC secret."""
    client = await make_server(rsa_config)
    public_pem = Path(rsa_config["auth"]["public_key_file"]).read_bytes()
    signing_input = (b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "."
                     + b64url(json.dumps(claims()).encode()))
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{b64url(signature)}"
    for via in ("query", "header"):
        assert await assert_refused(client, token=forged, via=via) == "token not signed with RS256"


async def test_es256_with_key_file(make_server: Any, tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "es256.pub.pem"
    path.write_bytes(pem_public(key))
    client = await make_server({"auth": {"algorithm": "ES256", "public_key_file": str(path)}})
    ws = await connector(client)(token=jwt.encode(claims("u5"), key, algorithm="ES256"))
    assert ws.connected is not None and ws.connected["data"]["user"]["id"] == "u5"
    rs = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert await assert_refused(client, token=rs) == "token not signed with ES256"


async def test_private_key_file_accepted_as_the_verifying_key(make_server: Any, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "es256.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    client = await make_server({"auth": {"algorithm": "ES256", "public_key_file": str(path)}})
    assert user_of(await connector(client)(token=jwt.encode(claims(), key, algorithm="ES256"))) == "u1"


@pytest.mark.parametrize("content", [b"not a key", None])
def test_unusable_key_file_fails_at_startup(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AuthError, match="auth.public_key_file"):
        create_app(make_config({"auth": {"algorithm": "RS256", "public_key_file": str(path)}}))


def test_key_file_of_the_wrong_type_fails_at_startup(tmp_path: Path) -> None:
    path = tmp_path / "ec.pub.pem"
    path.write_bytes(pem_public(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(AuthError, match="not a PEM key usable for RS256"):
        create_app(make_config({"auth": {"algorithm": "RS256", "public_key_file": str(path)}}))


# --- JWKS ------------------------------------------------------------------------------------
def jwk(key: Any, kid: str) -> dict[str, Any]:
    algo: Any = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    return {**algo.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


async def jwks_server(aiohttp_server: Any, served: dict[str, Any], hits: list[str]) -> str:
    async def keys(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response(served)

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", keys)
    return str((await aiohttp_server(app)).make_url("/.well-known/jwks.json"))


async def test_rs256_via_jwks_with_key_rotation(aiohttp_server: Any, make_server: Any,
                                               rsa_key: rsa.RSAPrivateKey) -> None:
    old, new = rsa_key, rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    served: dict[str, Any] = {"keys": [jwk(old, "k1"), jwk(ec_key, "e1")]}
    hits: list[str] = []
    url = await jwks_server(aiohttp_server, served, hits)
    client = await make_server({"auth": {"algorithm": "RS256", "jwks_url": url}})
    client.server.app[NODE].auth.jwks_refetch_interval = 0.0  # let each unknown kid refetch
    connect = connector(client)

    def signed(key: Any, kid: str, alg: str = "RS256") -> str:
        return jwt.encode(claims("u1"), key, algorithm=alg, headers={"kid": kid})

    assert user_of(await connect(token=signed(old, "k1"))) == "u1"
    assert len(hits) == 1
    # an ES256 key in the set is never used for an RS256 config
    assert "no RS256 key with kid 'e1'" in await assert_refused(client, token=signed(ec_key, "e1", "ES256"))
    hits.clear()
    served["keys"] = [jwk(old, "k1"), jwk(new, "k2")]  # the issuer rotates
    assert user_of(await connect(token=signed(new, "k2"))) == "u1"
    assert len(hits) == 1  # the unknown kid made the server fetch the set again
    assert user_of(await connect(token=signed(new, "k2"))) == "u1"
    assert user_of(await connect(token=signed(old, "k1"))) == "u1"
    assert len(hits) == 1  # known kids come from the cache
    forged = signed(rsa.generate_private_key(public_exponent=65537, key_size=2048), "k2")
    assert "signature" in (await assert_refused(client, token=forged)).lower()


async def test_unknown_kids_do_not_hammer_the_jwks_endpoint(aiohttp_server: Any, make_server: Any,
                                                            rsa_key: rsa.RSAPrivateKey) -> None:
    hits: list[str] = []
    url = await jwks_server(aiohttp_server, {"keys": [jwk(rsa_key, "k1")]}, hits)
    client = await make_server({"auth": {"algorithm": "RS256", "jwks_url": url}})
    for kid in ("x1", "x2", "x3"):
        token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": kid})
        assert await assert_refused(client, token=token) == f"no RS256 key with kid {kid!r} in the JWKS"
    assert len(hits) == 1
    good = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    assert user_of(await connector(client)(token=good)) == "u1"


async def test_connections_during_the_first_fetch_wait_for_it(aiohttp_server: Any, make_server: Any,
                                                               rsa_key: rsa.RSAPrivateKey) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_keys(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.json_response({"keys": [jwk(rsa_key, "k1")]})

    app = web.Application()
    app.router.add_get("/jwks", slow_keys)
    url = str((await aiohttp_server(app)).make_url("/jwks"))
    connect = connector(await make_server({"auth": {"algorithm": "RS256", "jwks_url": url}}))
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    first = asyncio.create_task(connect(token=token))
    await asyncio.wait_for(entered.wait(), 5)
    others = [asyncio.create_task(connect(token=token)) for _ in range(2)]
    await asyncio.wait(others, timeout=0.2)  # they must not be refused while the fetch runs
    release.set()
    for ws in await asyncio.wait_for(asyncio.gather(first, *others), 10):
        assert user_of(ws) == "u1"


async def test_unreachable_jwks_refuses_with_401(make_server: Any, rsa_key: rsa.RSAPrivateKey,
                                                 aiohttp_server: Any) -> None:
    gone = await aiohttp_server(web.Application())  # answers 404
    client = await make_server({"auth": {"algorithm": "RS256", "jwks_url": str(gone.make_url("/jwks"))}})
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    assert await assert_refused(client, token=token) == "cannot fetch the JWKS"


# --- expiry while connected and refresh -------------------------------------------------------
async def test_connection_closed_4001_at_expiry(connect: Connect) -> None:
    exp = soon()
    ws = await connect("u1", exp=exp)
    assert ws.connected is not None and ws.connected["data"]["expires_at"] == exp
    assert await ws.closed(timeout=exp - time.time() + 3) == 4001
    assert time.time() >= exp - 0.05


async def test_refresh_keeps_the_connection_past_the_old_expiry(connect: Connect) -> None:
    exp = soon()
    ws = await connect("u1", exp=exp)
    new_exp = int(time.time()) + 600
    reply = await ws.request("refresh", data={"token": make_token("u1", exp=new_exp)})
    assert reply["type"] == "refreshed" and reply["data"] == {"expires_at": new_exp}
    with pytest.raises(asyncio.TimeoutError):  # no close frame, nothing at all, past the old exp
        await ws.ws.receive(timeout=exp - time.time() + 0.5)
    assert (await ws.request("ping"))["type"] == "pong"


async def test_refresh_for_another_sub_forbidden_and_old_expiry_stays(connect: Connect) -> None:
    exp = soon()
    ws = await connect("u1", exp=exp)
    reply = await ws.request("refresh", data={"token": make_token("u2", ttl=600)})
    assert reply["type"] == "error" and reply["data"]["code"] == "FORBIDDEN"
    assert await ws.closed(timeout=exp - time.time() + 3) == 4001


@pytest.mark.parametrize("token", [
    "garbage",
    make_token("u1", secret="another-secret-0123456789abcdef-xyz"),
    make_token("u1", ttl=-60),
])
async def test_refresh_with_an_invalid_token_keeps_the_connection(connect: Connect, token: str) -> None:
    ws = await connect("u1")
    reply = await ws.request("refresh", data={"token": token})
    assert reply["type"] == "error" and reply["data"]["code"] == "UNAUTHORIZED"
    assert (await ws.request("ping"))["type"] == "pong"


async def test_refresh_without_token_is_invalid_message(connect: Connect) -> None:
    ws = await connect("u1")
    reply = await ws.request("refresh", data={})
    assert reply["type"] == "error" and reply["data"]["code"] == "INVALID_MESSAGE"
