"""The HTTP API's contract (PROTOCOL §6): every endpoint called with a user's token, an admin's
token, an API key and no credentials, each answered as §6 says who may call it; and the error
answers every endpoint shares (JSON body, 400 naming the field, 401, 403, 404, 405, 409, 413,
429), checked over real HTTP against a real server."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import load_config
from server.http.openapi import route_path
from server.reload import RELOADER
from tests.conftest import SECRET, WS, connector, make_config, make_token

API_KEY = "test-api-key-0123456789abcdef"
USER = {"Authorization": f"Bearer {make_token('u1', username='alice')}"}
ADMIN = {"Authorization": f"Bearer {make_token('boss', username='boss', roles=['admin'])}"}
KEY = {"X-API-Key": API_KEY}
CREDENTIALS = {"none": {}, "user": USER, "admin": ADMIN, "key": KEY}
BASE = {"api": {"keys": [API_KEY]}, "auth": {"dev_login": True}}

# who may call, as PROTOCOL §6 says; ``member`` is ``user`` here: u1 and boss are in the room
OK = "ok"
WHO: dict[str, dict[str, int | str]] = {
    "anyone": {"none": OK, "user": OK, "admin": OK, "key": OK},
    "user": {"none": 401, "user": OK, "admin": OK, "key": OK},
    "bearer": {"none": 401, "user": OK, "admin": OK, "key": 401},  # acts as the bearer
    "admin": {"none": 401, "user": 403, "admin": OK, "key": OK},
}
_fresh = itertools.count()


@dataclass
class Call:
    who: str
    status: int = 200  # the success status
    body: Callable[[], dict[str, Any]] | None = None
    #: path parameters; ``new_room`` is a room made for this one call
    params: Callable[[], dict[str, str]] = lambda: {"id": "lobby", "user_id": "u1"}
    needs_room: bool = False


def _new_name() -> str:
    return f"r{next(_fresh)}"


CALLS: dict[tuple[str, str], Call] = {
    ("GET", "/"): Call("anyone"),
    ("GET", "/healthz"): Call("anyone"),
    ("GET", "/readyz"): Call("anyone"),
    ("GET", "/metrics"): Call("anyone"),
    ("GET", "/api/protocol"): Call("anyone"),
    ("GET", "/api/openapi.json"): Call("anyone"),
    ("POST", "/api/dev/token"): Call("anyone", body=lambda: {"username": "visitor"}),
    ("GET", "/api/online"): Call("user"),
    ("GET", "/api/online/count"): Call("user"),
    ("GET", "/api/users/{user_id}/status"): Call("user"),
    ("GET", "/api/rooms"): Call("user"),
    ("GET", "/api/rooms/{id}"): Call("user"),
    ("GET", "/api/rooms/{id}/members"): Call("user"),
    ("GET", "/api/rooms/{id}/history"): Call("user"),
    ("POST", "/api/rooms/{id}/join"): Call("bearer"),
    ("POST", "/api/rooms/{id}/leave"): Call("bearer"),
    # a service posts without a connection: an API key too (permissions.post_without_connection)
    ("POST", "/api/messages"): Call("user", body=lambda: {"room": "lobby", "content": "hi"}),
    ("GET", "/api/messages/inbox"): Call("bearer"),
    ("GET", "/api/messages/conversations"): Call("bearer"),
    ("GET", "/api/messages/conversations/{user_id}"): Call("bearer"),
    ("GET", "/api/stats"): Call("admin"),
    ("POST", "/api/rooms"): Call("admin", 201, body=lambda: {"id": _new_name()}),
    ("DELETE", "/api/rooms/{id}"): Call("admin", needs_room=True),
    ("POST", "/api/send"): Call("admin", body=lambda: {"to_user_id": "u1", "type": "custom.ping"}),
    ("POST", "/api/broadcast"): Call("admin", body=lambda: {"type": "custom.news"}),
    ("POST", "/api/disconnect"): Call("admin", body=lambda: {"user_id": "nobody"}),
    ("POST", "/api/cleanup"): Call("admin"),
    ("POST", "/api/tokens/revoke"): Call("admin", body=lambda: {"jti": _new_name()}),
    ("POST", "/api/config/reload"): Call("admin"),
}
#: routes that are not API calls, checked by their own suites
NOT_CALLS = {("GET", "/ws"), ("GET", "/static/{filename}")}


def _config_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "websocket.yaml"
    path.write_text(text)
    return str(path)


@pytest.fixture
async def api(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[TestClient]:
    """A server started from a config file (so that a reload has one to read), with u1 and the
    admin boss connected and in room lobby."""
    path = _config_file(tmp_path, f"auth:\n  secret: {SECRET}\n  dev_login: true\n"
                                  f"api:\n  keys: [{API_KEY}]\nsecurity:\n  connect_rate_per_ip: 0\n")
    app = create_app(load_config(path, env={}).config, config_path=path)
    app[RELOADER].env = {}
    client = await aiohttp_client(app)
    await (await client.post("/api/rooms", json={"id": "lobby"}, headers=ADMIN)).read()
    connect = connector(client)
    sockets = [await connect("u1", query={"rooms": "lobby"}, username="alice"),
               await connect("boss", query={"rooms": "lobby"}, username="boss", roles=["admin"])]
    yield client
    for ws in sockets:
        await ws.close()


async def _call(client: TestClient, method: str, path: str, call: Call,
                headers: dict[str, str]) -> tuple[int, Any]:
    params = call.params()
    if call.needs_room:
        params["id"] = _new_name()
        async with client.post("/api/rooms", json={"id": params["id"]}, headers=ADMIN) as made:
            assert made.status == 201
    url = path.format(**params)
    body = call.body() if call.body else None
    async with client.request(method, url, json=body, headers=headers) as resp:
        text = await resp.text()
        is_json = resp.content_type == "application/json"
        return resp.status, (await resp.json()) if is_json and text else text


def test_the_table_covers_every_documented_route() -> None:
    app = create_app(make_config())
    routes = {(r.method, route_path(r)) for r in app.router.routes() if r.method != "HEAD"}
    assert routes == set(CALLS) | NOT_CALLS


@pytest.mark.parametrize("route", sorted(CALLS), ids=lambda r: f"{r[0]} {r[1]}")
async def test_each_endpoint_with_each_kind_of_caller(api: TestClient, route: tuple[str, str]) -> None:
    method, path = route
    call = CALLS[route]
    for who, headers in CREDENTIALS.items():
        expected = WHO[call.who][who]
        status, body = await _call(api, method, path, call, headers)
        if expected == OK:
            assert status == call.status, (who, status, body)
        else:
            assert status == expected, (who, status, body)
            assert body["error"]["code"] == ("UNAUTHORIZED" if expected == 401 else "FORBIDDEN")
            assert body["error"]["message"]


# --- the shared error answers -----------------------------------------------------------------
async def test_a_bad_query_is_400_naming_the_field(api: TestClient) -> None:
    async with api.get("/api/online?limit=many", headers=USER) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "INVALID_REQUEST" and error["field"] == "limit"
    assert error["message"].startswith("limit: must be an integer")
    async with api.get("/api/rooms?offset=-1", headers=USER) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["field"] == "offset"


@pytest.mark.parametrize("body, field", [
    ({"room": "lobby"}, "content"),
    ({"room": "lobby", "content": 5}, "content"),
    ({"content": "hi"}, "room"),
    ({"room": "lobby", "to": "u2", "content": "hi"}, "room"),
    ({"room": " lobby", "content": "hi"}, "room"),
    ({"room": "lobby", "content": "hi", "colour": "red"}, "colour"),
])
async def test_a_bad_body_is_400_naming_the_field(api: TestClient, body: dict[str, Any],
                                                   field: str) -> None:
    async with api.post("/api/messages", json=body, headers=USER) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "INVALID_REQUEST" and error["field"] == field, error


@pytest.mark.parametrize("raw, message", [(b"{not json", "the body is not valid JSON"),
                                          (b"[1, 2]", "the body must be a JSON object")])
async def test_a_body_that_is_not_a_json_object_is_400(api: TestClient, raw: bytes,
                                                       message: str) -> None:
    async with api.post("/api/rooms", data=raw, headers=ADMIN) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "INVALID_JSON" and error["message"].startswith(message)


async def test_a_bad_or_expired_token_and_a_wrong_key_are_401(api: TestClient) -> None:
    for headers in ({"Authorization": "Bearer not-a-jwt"},
                    {"Authorization": f"Bearer {make_token('u1', ttl=-10)}"},
                    {"Authorization": f"Bearer {make_token('u1', secret='x' * 40)}"},
                    {"X-API-Key": API_KEY + "x"}, {"X-API-Key": ""},
                    {**ADMIN, "X-API-Key": "wrong"}, {**KEY, "Authorization": "Basic dTpw"}):
        async with api.get("/api/stats", headers=headers) as resp:
            assert resp.status == 401, headers
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            assert (await resp.json())["error"]["code"] == "UNAUTHORIZED"


async def test_an_unknown_path_is_a_json_404_and_a_wrong_method_a_json_405(api: TestClient) -> None:
    async with api.get("/api/nothing-here", headers=USER) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "NOT_FOUND"
    async with api.get("/api/rooms/no-such-room", headers=USER) as resp:
        assert resp.status == 404
        assert "no-such-room" in (await resp.json())["error"]["message"]
    async with api.put("/api/rooms", headers=ADMIN) as resp:
        assert resp.status == 405
        assert set(resp.headers["Allow"].split(",")) >= {"GET", "POST"}
        assert (await resp.json())["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_a_room_that_exists_is_409(api: TestClient) -> None:
    async with api.post("/api/rooms", json={"id": "lobby"}, headers=ADMIN) as resp:
        assert resp.status == 409
        assert (await resp.json())["error"]["code"] == "ROOM_EXISTS"


async def test_a_body_over_max_body_size_is_413(make_server: Any) -> None:
    client = await make_server({**BASE, "api": {"keys": [API_KEY], "max_body_size": 100}})
    async with client.post("/api/rooms", json={"id": "x", "description": "d" * 200},
                           headers=ADMIN) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "PAYLOAD_TOO_LARGE"
    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
        for _ in range(10):
            yield b"x" * 50

    async with client.post("/api/rooms", data=chunked(), headers=ADMIN) as resp:
        assert resp.status == 413


async def test_pages_are_cut_to_max_page_size(make_server: Any) -> None:
    client = await make_server({**BASE, "api": {"keys": [API_KEY], "page_size": 2,
                                                "max_page_size": 3}})
    for name in "abcde":
        async with client.post("/api/rooms", json={"id": name}, headers=KEY) as resp:
            assert resp.status == 201
    async def ids(query: str) -> list[str]:
        async with client.get(f"/api/rooms{query}", headers=KEY) as resp:
            body = await resp.json()
            assert body["total"] == 5
            return [room["id"] for room in body["rooms"]]
    assert await ids("") == ["a", "b"]  # page_size
    assert await ids("?limit=1000") == ["a", "b", "c"]  # cut to max_page_size
    assert await ids("?limit=3&offset=3") == ["d", "e"]
    assert await ids("?offset=99") == []


async def test_api_keys_come_from_the_environment_too(aiohttp_client: Any) -> None:
    loaded = load_config(None, env={"JWT_SECRET": SECRET, "WS_API_KEYS": "k-one,k-two"})
    client = await aiohttp_client(create_app(loaded.config))
    for key, status in (("k-one", 200), ("k-two", 200), ("k-three", 401)):
        async with client.get("/api/stats", headers={"X-API-Key": key}) as resp:
            assert resp.status == status


async def test_dev_token_is_404_unless_dev_login_and_its_token_connects(make_server: Any) -> None:
    off = await make_server()
    async with off.post("/api/dev/token", json={"username": "ann"}) as resp:
        assert resp.status == 404
    on = await make_server({"auth": {"dev_login": True}})
    async with on.post("/api/dev/token", json={"username": "ann", "roles": ["admin"]}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["user"] == {"id": "ann", "username": "ann"}
    ws: WS = await connector(on)("ann", token=body["token"])
    assert ws.connected is not None and ws.connected["data"]["user"] == {"id": "ann", "username": "ann"}
    async with on.get("/api/stats", headers={"Authorization": f"Bearer {body['token']}"}) as resp:
        assert resp.status == 200  # the roles asked for are in the token
