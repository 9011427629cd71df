"""config/production.yaml, as shipped, starts against a real Redis (the suite's own
redis-server) and serves a client with a token its login service would sign: it used to be
valid for check-config and die at startup for want of the Redis backend."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp
import jwt

from tests.proc import ServerProcess

pytest_plugins = ["tests.services"]

ROOT = Path(__file__).resolve().parent.parent
SECRET = "p" * 48


def _token(sub: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 600, "aud": "switchboard",
                       "iss": "https://login.example.com/"}, SECRET, algorithm="HS256")


async def test_production_yaml_serves_on_a_real_redis(redis_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WS_")}
    env.update({"JWT_SECRET": SECRET, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1",
                "WS_LOGGING_FORMAT": "json"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "serve", "-c", str(ROOT / "config" / "production.yaml"),
        "--host", "127.0.0.1", "--port", "0", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
        cwd=str(tmp_path))
    server = ServerProcess(proc)
    try:
        await server.wait_listening()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/readyz") as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["backend"] == "redis"
            ws = await session.ws_connect(f"{server.url}/ws", params={"token": _token("alice")},
                                          headers={"Origin": "https://app.example.com"})
            connected = await ws.receive_json(timeout=10)
            assert connected["type"] == "connected"
            assert sorted(connected["data"]["rooms"]) == ["announce:all", "general"]
            await ws.close()
        assert await server.stop() == 0
    finally:
        await server.kill()
