"""Shared fixtures: a real server per test (aiohttp's TestServer on a free port) and real
WebSocket clients. Plugins are enabled explicitly in each test's config."""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

import jwt
import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.testing import DEFAULT_TIMEOUT as RECV_TIMEOUT
from server.testing import TEST_SECRET as SECRET
from server.testing import SwitchboardClient
from server.testing import build_config as make_config
from server.testing import merge as _merge

__all__ = ["RECV_TIMEOUT", "SECRET", "WS", "Connect", "connector", "make_config", "make_token",
           "_merge"]


def make_token(sub: str = "u1", *, username: str | None = None, roles: list[str] | None = None,
               ttl: float = 3600, secret: str = SECRET, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl,
                            "username": username or f"user-{sub}", **claims}
    if roles:
        body["roles"] = roles
    return jwt.encode(body, secret, algorithm="HS256")


class WS(SwitchboardClient):
    """server.testing's client (bounded waits); ``request`` drops the frames that come before
    its reply, as these tests were written for."""

    keep_frames_before_reply = False


Connect = Callable[..., Awaitable[WS]]


@pytest.fixture
async def make_server(aiohttp_client: Any) -> Callable[..., Awaitable[TestClient]]:
    async def factory(overrides: dict[str, Any] | None = None, **client_kwargs: Any) -> TestClient:
        return await aiohttp_client(create_app(make_config(overrides)), **client_kwargs)

    return factory


@pytest.fixture
async def client(make_server: Any) -> TestClient:
    return await make_server()


def connector(client: TestClient) -> Connect:
    async def connect(sub: str = "u1", *, token: str | None = None, query: dict[str, str] | None = None,
                      expect_connected: bool = True, **token_kw: Any) -> WS:
        params = {"token": token or make_token(sub, **token_kw), **(query or {})}
        ws = WS(await client.ws_connect("/ws", params=params, autoping=True))
        if expect_connected:
            ws.connected = await ws.recv_type("connected")
        return ws

    return connect


@pytest.fixture
def connect(client: TestClient) -> Connect:
    return connector(client)
