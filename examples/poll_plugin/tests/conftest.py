"""Fixtures for testing a Switchboard plugin against a real server: the app on a free port
(pytest-aiohttp's ``aiohttp_client``) and real WebSocket clients with bounded waits.
Self-contained: copy this file next to your own plugin's tests."""

from __future__ import annotations

import json
import time
from typing import Any, Awaitable, Callable

import jwt
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import load_config

SECRET = "plugin-test-secret-0123456789abcdef"
TIMEOUT = 5.0


def config(plugins: dict[str, Any]) -> Any:
    """A server config with the ``plugins`` section given (enabled list and plugin sections)."""
    return load_config(None, env={}, overrides={
        "auth": {"secret": SECRET}, "security": {"connect_rate_per_ip": 0}, "plugins": plugins,
    }).config


class Client:
    def __init__(self, ws: ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = 0

    async def recv(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=TIMEOUT)
        assert msg.type is WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data!r}"
        frame: dict[str, Any] = json.loads(msg.data)
        return frame

    async def recv_type(self, type_: str) -> dict[str, Any]:
        """The next frame of ``type_``; frames of other types are skipped."""
        while True:
            frame = await self.recv()
            if frame["type"] == type_:
                return frame

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send a frame with an id; return the server's reply to it (``ack``, ``error``...)."""
        self._ids += 1
        fid = f"req-{self._ids}"
        await self.ws.send_str(json.dumps({"type": type_, "id": fid, **fields}))
        while True:
            frame = await self.recv()
            if frame.get("reply_to") == fid:
                return frame


Connect = Callable[..., Awaitable[Client]]


@pytest.fixture
def plugins() -> dict[str, Any]:
    """Override in a test module (or parametrize) to change the ``plugins`` section."""
    return {"enabled": ["chat", "poll"]}


@pytest.fixture
async def server(aiohttp_client: Any, plugins: dict[str, Any]) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config(plugins)))
    return client


@pytest.fixture
def connect(server: TestClient[Any, Any]) -> Connect:
    async def connect(user_id: str) -> Client:
        now = int(time.time())
        token = jwt.encode({"sub": user_id, "username": user_id, "iat": now, "exp": now + 600},
                           SECRET, algorithm="HS256")
        client = Client(await server.ws_connect("/ws", params={"token": token}))
        await client.recv_type("connected")
        return client

    return connect
