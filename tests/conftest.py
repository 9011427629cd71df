"""Shared fixtures: a real server per test (aiohttp's TestServer on a free port) and real
WebSocket clients. Plugins are enabled explicitly in each test's config."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Awaitable, Callable

import jwt
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import Config, load_config

SECRET = "test-secret-0123456789abcdef0123456789"
RECV_TIMEOUT = 5.0


def make_config(overrides: dict[str, Any] | None = None) -> Config:
    base: dict[str, Any] = {"auth": {"secret": SECRET}, "plugins": {"enabled": ["chat"]},
                            "security": {"connect_rate_per_ip": 0}}
    merged = _merge(base, overrides or {})
    return load_config(None, env={}, overrides=merged).config


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_token(sub: str = "u1", *, username: str | None = None, roles: list[str] | None = None,
               ttl: float = 3600, secret: str = SECRET, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl,
                            "username": username or f"user-{sub}", **claims}
    if roles:
        body["roles"] = roles
    return jwt.encode(body, secret, algorithm="HS256")


class WS:
    """A thin test client over aiohttp's ClientWebSocketResponse with bounded waits."""

    def __init__(self, ws: ClientWebSocketResponse) -> None:
        self.ws = ws
        self.connected: dict[str, Any] | None = None

    async def send(self, type_: str, **fields: Any) -> None:
        await self.ws.send_str(json.dumps({"type": type_, **fields}))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type is WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data!r} {msg.extra!r}"
        return json.loads(msg.data)

    async def recv_type(self, type_: str, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        """Receive until a frame of ``type_`` arrives (other frames are skipped)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"no {type_!r} frame within {timeout}s"
            frame = await self.recv(left)
            if frame["type"] == type_:
                return frame

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send with an id and return the reply carrying ``reply_to`` that id."""
        fid = f"r{time.monotonic_ns()}"
        await self.send(type_, id=fid, **fields)
        while True:
            frame = await self.recv()
            if frame.get("reply_to") == fid:
                return frame

    async def until_pong(self) -> list[dict[str, Any]]:
        """Ping and return the frames that arrived before the pong: everything the server had
        queued for this connection by then (frames are answered in order)."""
        fid = f"marker-{time.monotonic_ns()}"
        await self.send("ping", id=fid)
        frames = []
        while (frame := await self.recv()).get("reply_to") != fid:
            frames.append(frame)
        return frames

    async def closed(self, timeout: float = RECV_TIMEOUT) -> int | None:
        """Read until the server closes; return the close code."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, "server did not close the connection in time"
            msg = await self.ws.receive(timeout=left)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR):
                return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()


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
